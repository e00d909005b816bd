"""Clips through an NVIDIA DALI pipeline: batched over files, frames chosen in the decoder,
resized and cropped inside the pipeline.

    encoded bytes, frame indices, scaled size, crop   (fn.external_source, one batch of files)
        -> fn.decoders.video(frames=...)               (`mixed`: NVDEC; `cpu`: VP9, VP8, MJPEG)
        -> fn.resize(size=..., antialias)              (to cover the target, as the FramePlan says)
        -> fn.slice(anchor, shape, axes H, W)          (the centre crop, in stored coordinates)

The decoder is given the exact frame indices the sample uses (its start, length and stride), not
the whole file. The source is a callable DALI pulls batches from, so with `prefetch_queue_depth`
2 the pipeline decodes the next batch of a request while the current one is handed out. A failed
run leaves a DALI pipeline unusable: it is rebuilt, and the files of the failed batch are decoded
one at a time to find the bad one, whose reason is DALI's own line.

The crop is turned upright (a display matrix) outside the pipeline, on target-size frames: DALI
does not read display matrices, so the plan comes from the first frame PyAV decodes
(`decode.describe(..., rotation=True)`, on the container the reader opened to probe the file).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from megagoku.data.errors import DecodeError
from megagoku.data.geometry import FramePlan, crop_and_turn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipRequest:
    path: Path
    indices: tuple[int, ...]
    plan: FramePlan


def dali_reason(error: Exception) -> str:
    """The informative line of a DALI pipeline error, which wraps it in "Critical error in
    pipeline:", the operator's traceback and "Current pipeline object is no longer valid."."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "encountered:" in lines[:-1]:  # the operator's own message follows its traceback
        return lines[lines.index("encountered:") + 1]
    for line in lines:
        if line.startswith("[") and "] " in line:  # "[file.cc:253] Codec 27 (h264) is not ..."
            return line.split("] ", 1)[1]
    wrapping = ("Critical error", "Error in", "which was used", "File ", "encountered:",
                "Current pipeline object")
    informative = [line for line in lines if not line.startswith(wrapping)]
    return (informative or lines or [type(error).__name__])[0]


class _Batches:
    """The pipeline's source: the pending requests, `batch_size` at a time; StopIteration ends
    one `decode` call (an epoch, to DALI)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.pending: list[tuple[ClipRequest, np.ndarray]] = []

    def __call__(self):
        if not self.pending:
            raise StopIteration
        batch, self.pending = self.pending[:self.batch_size], self.pending[self.batch_size:]
        return ([data for _, data in batch],
                [np.asarray(r.indices, dtype=np.int32) for r, _ in batch],
                [np.asarray(r.plan.scaled, dtype=np.float32) for r, _ in batch],
                [np.asarray(r.plan.crop[:2], dtype=np.int32) for r, _ in batch],
                [np.asarray(r.plan.crop[2:], dtype=np.int32) for r, _ in batch])


class DaliClipDecoder:
    """Decodes batches of clip requests; `decode` returns, per request, its (T, H, W, 3) uint8
    frames (upright, target size) or the DecodeError that stops it."""

    def __init__(self, device: str = "cpu", batch_size: int = 4, threads: int = 1,
                 prefetch: int = 2):
        self.device, self.batch_size, self.threads, self.prefetch = device, batch_size, threads, \
            prefetch
        self._build()

    def _build(self) -> None:
        import torch
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device == "cuda"
        self.source = _Batches(self.batch_size)

        @pipeline_def(batch_size=self.batch_size, num_threads=self.threads,
                      device_id=torch.cuda.current_device() if gpu else None,
                      prefetch_queue_depth=self.prefetch)
        def pipeline():
            encoded, frames, size, anchor, shape = fn.external_source(
                source=self.source, num_outputs=5, batch=True,
                dtype=[types.UINT8, types.INT32, types.FLOAT, types.INT32, types.INT32])
            # pad_mode none: a frame past the end is an error, never a silent black frame.
            video = fn.decoders.video(encoded, device="mixed" if gpu else "cpu", frames=frames,
                                      pad_mode="none")
            video = fn.resize(video, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
            return fn.slice(video, anchor, shape, axis_names="HW", out_of_bounds_policy="error")

        self.gpu = gpu
        self.pipe = pipeline()
        self.pipe.build()
        self._used = False

    def _run(self, items: list[tuple[ClipRequest, np.ndarray]]) -> list[np.ndarray]:
        """One epoch over `items`; raises what DALI raised (the pipeline is then unusable)."""
        if self._used:
            self.pipe.reset()
        self._used = True
        self.source.pending = list(items)
        outputs: list[np.ndarray] = []
        while True:
            try:
                (batch,) = self.pipe.run()
            except StopIteration:
                break
            if self.gpu:
                batch = batch.as_cpu()
            outputs.extend(np.asarray(batch[i]) for i in range(len(batch)))
        return outputs

    def decode(self, requests: list[ClipRequest]) -> list[Union[np.ndarray, DecodeError]]:
        results: list[Union[np.ndarray, DecodeError, None]] = [None] * len(requests)
        items = []
        for i, request in enumerate(requests):
            try:
                items.append((i, (request, np.fromfile(request.path, dtype=np.uint8))))
            except OSError as e:
                results[i] = DecodeError(request.path, "unreadable", f"unreadable ({e})")
        if not items:
            return results
        try:
            runs = [(items, self._run([item for _, item in items]))]
        except Exception as e:  # noqa: BLE001 - DALI reports decode failures as RuntimeError
            log.debug("DALI batch failed (%s): decoding its files one at a time", dali_reason(e))
            runs = []
            self._build()
            for i, item in items:
                try:
                    runs.append(([(i, item)], self._run([item])))
                except Exception as e:  # noqa: BLE001
                    results[i] = DecodeError(item[0].path, "undecodable",
                                             f"DALI could not decode it ({dali_reason(e)})")
                    self._build()
        for done, outputs in runs:
            for (i, (request, _)), frames in zip(done, outputs):
                if frames.ndim != 4 or frames.shape[0] != len(request.indices):
                    results[i] = DecodeError(request.path, "undecodable", "no frames decoded")
                else:
                    results[i] = crop_and_turn(frames, request.plan, cropped=True)
        return results
