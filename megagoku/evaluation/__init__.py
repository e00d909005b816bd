"""Evaluation: prompt adherence and Fréchet distances on the built-in data, benchmark hooks
(VBench, GenEval), evaluation during training, image-to-video adherence, and the RF-vs-DDPM
ablation. See each module's docstring; the rooms table of docs/architecture.md says what this
room may import (never `train/`)."""
