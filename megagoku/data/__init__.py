"""Data: manifests, the built-in moving-shapes set and Patch n' Pack packing."""

from megagoku.data.manifest import ManifestError, MediaRecord, load_manifest, write_manifest
from megagoku.data.packing import PackedBatch, PackingLoader, pack, patchify, unpatchify
from megagoku.data.shapes import ShapesDataset, describe_video, parse_caption

__all__ = ["ManifestError", "MediaRecord", "PackedBatch", "PackingLoader", "ShapesDataset",
           "describe_video", "load_manifest", "pack", "parse_caption", "patchify", "unpatchify",
           "write_manifest"]
