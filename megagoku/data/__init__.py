"""Data: the built-in moving-shapes set and Patch n' Pack packing."""

from megagoku.data.packing import PackedBatch, PackingLoader, pack, patchify, unpatchify
from megagoku.data.shapes import ShapesDataset, describe_video, parse_caption

__all__ = ["PackedBatch", "PackingLoader", "ShapesDataset", "describe_video", "pack",
           "parse_caption", "patchify", "unpatchify"]
