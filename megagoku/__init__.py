"""megagoku: training system for Goku-style rectified-flow image and video Transformers."""

__version__ = "0.1.0"
