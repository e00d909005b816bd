"""Evaluation: prompt adherence and Fréchet distances on the built-in data, benchmark hooks (VBench, GenEval), periodic evaluation during training, and the RF-vs-DDPM ablation."""
