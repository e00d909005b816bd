"""Generation: prompts -> packed noise -> Euler ODE with CFG -> latents -> pixels."""

from megagoku.inference.generate import Generator, load_generator

__all__ = ["Generator", "load_generator"]
