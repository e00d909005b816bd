"""`megagoku bench data`: the data path at realistic sizes (issue 24).

Decode: H.264 and VP9 clips generated here (a panning colour texture with camera-like grain and a
moving square: 1280x720 at 30 fps for 6 s and 1920x1080 at 24 fps for 8 s by default, written
once into --clips-dir) read to Goku's 480p stage (480x864, 65 frames), to issue 24's measurement
size (64x64, 16 frames) and to the demo's (16x16, 8 frames), by each backend that can:

  reference  the path before issue 24 (every frame to RGB at source size, then float resizing):
             the baseline every other row is a ratio against
  pyav       only the frames the sample uses, scaled by swscale in the decoder
  dali       the DALI pipeline (on a CPU: VP9 only)

Each (clip, target, backend) runs in a fresh process: seconds per sample (median of --repeats,
after one warm-up), frames/s, and the process's peak RSS above its RSS after the imports.

Manifest: how long a training run takes to open a large manifest (--manifest-rows, 200,000 by
default, written here): `ManifestDataset` (parse, validate every record, resolve its path, build
the epoch order, read the first sample) against the floor of reading the same file with
`json.loads` line by line, as a ratio, with rows/s and MB/s.

Loader: short training runs of issue 24's measurement (`configs/tiny.yaml`, a manifest of 8 rows
of the 1920x1080 H.264 clip, data 64x64x16, 8192 tokens a step, 6 steps, a log line a step) with
0, 1 and 2 data workers, and the built-in shapes at the same sizes as the reference: per step
data_wait_fraction and samples/s, the training process's peak RSS and the largest worker's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

CODECS = {"h264": ("libx264", ".mp4", {"crf": "20", "preset": "veryfast"}),
          "vp9": ("libvpx-vp9", ".webm", {"crf": "32", "b": "0", "deadline": "realtime",
                                          "cpu-used": "8", "row-mt": "1"})}
DEFAULT_SOURCES = ("1280x720@30:6", "1920x1080@24:8")
DEFAULT_TARGETS = ("480x864x65:goku-480p", "64x64x16:issue-24", "16x16x8:demo")
LOADER_SOURCE = "1920x1080@24:8"


@dataclass(frozen=True)
class Source:
    width: int
    height: int
    fps: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> "Source":
        try:
            size, rest = text.split("@")
            fps, seconds = rest.split(":")
            w, h = size.split("x")
            source = cls(int(w), int(h), int(fps), float(seconds))
        except ValueError:
            raise ValueError(f"--source {text!r}: expected WxH@FPS:SECONDS, e.g. "
                             "1920x1080@24:8") from None
        if min(source.width, source.height, source.fps) < 2 or source.seconds <= 0:
            raise ValueError(f"--source {text!r}: sizes and rate must be at least 2")
        return source

    @property
    def frames(self) -> int:
        return int(round(self.seconds * self.fps))

    def name(self, codec: str) -> str:
        return f"{codec}_{self.width}x{self.height}_{self.fps}fps_{self.seconds:g}s"


@dataclass(frozen=True)
class Size:
    height: int
    width: int
    frames: int
    name: str

    @classmethod
    def parse(cls, text: str) -> "Size":
        dims, _, name = text.partition(":")
        try:
            h, w, t = (int(v) for v in dims.split("x"))
        except ValueError:
            raise ValueError(f"--target {text!r}: expected HxWxFRAMES[:name], e.g. "
                             "480x864x65:goku-480p") from None
        if min(h, w, t) < 1:
            raise ValueError(f"--target {text!r}: sizes must be positive")
        return cls(h, w, t, name or dims)


def grain_clip(path: Path, codec: str, source: Source, seed: int = 0) -> Path:
    """A camera-like test clip: a colour texture panning 4 px a frame, fresh grain on every frame
    (which is what makes real footage cost its bitrate), a red square crossing it. Streamed to
    the encoder frame by frame; nothing of the whole clip is held."""
    import av

    encoder, _, options = CODECS[codec]
    w, h, n = source.width, source.height, source.frames
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h + 64, 0:w + 4 * n + 64].astype(np.float32)
    texture = np.zeros(y.shape + (3,), np.float32)
    for c in range(3):
        field = np.zeros(y.shape, np.float32)
        for _ in range(4):
            fy, fx = rng.uniform(0.002, 0.01, size=2)
            field += np.sin(fy * y * np.pi + fx * x * np.pi + rng.uniform(0, 6.28))
        texture[..., c] = 120 + 30 * field
    texture = np.clip(texture + rng.normal(0, 6, size=y.shape + (1,)), 0, 255).astype(np.uint8)
    del y, x
    r = h // 8
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(encoder, rate=source.fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = dict(options)
        for i in range(n):
            frame = texture[32:32 + h, 4 * i:4 * i + w].astype(np.int16)
            cx = int(w * 0.2 + w * 0.6 * i / n)
            frame[h // 2 - r:h // 2 + r, cx - r:cx + r] = (220, 40, 40)
            grain = rng.integers(-4, 5, size=(h // 2, w // 2, 1), dtype=np.int16)
            frame += grain.repeat(2, axis=0).repeat(2, axis=1)[:h, :w]
            image = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8),
                                               format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def clip_for(folder: Path, codec: str, source: Source) -> Path:
    """The clip for (codec, source) in `folder`, generated the first time it is asked for."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (source.name(codec) + CODECS[codec][1])
    if not path.is_file():
        print(f"generating {path} ({source.frames} frames)...", flush=True)
        start = time.perf_counter()
        grain_clip(path, codec, source)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    return path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _decode_child(path: str, backend: str, size: Size, repeats: int, queue) -> None:
    """In a fresh process: time `repeats` reads of one sample, report the peak memory."""
    try:
        from megagoku.data.decode import MediaReader, Target, decode_pyav, frames_needed, \
            probe, to_pixels

        target = Target(size.height, size.width, size.frames)
        file = Path(path)
        if backend == "reference":
            fps = probe(file).fps

            def read():
                return to_pixels(decode_pyav(file, limit=frames_needed(fps, target)), target)
        else:
            reader = MediaReader(backend=backend)

            def read():
                pixels = reader.read(file, "video", target)
                if pixels is None:
                    raise RuntimeError(f"{backend} could not read {file}: "
                                       f"{dict(reader.stats.skipped)}")
                return pixels

        base = _rss_mb()
        read()  # warm-up: DALI builds its pipeline, the codecs their tables
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = read()
            times.append(time.perf_counter() - start)
            del out
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put({"seconds": statistics.median(times), "peak_mb": peak - base,
                   "base_mb": base})
    except Exception as e:  # noqa: BLE001 - reported as the row's result
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _in_child(target, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    try:
        result = queue.get(timeout=3600)
    finally:
        process.join()
    return result


@dataclass
class DecodeRow:
    clip: str
    bitrate_mbps: float
    target: str
    backend: str
    seconds_per_sample: Optional[float]
    frames_per_s: Optional[float]
    peak_mb: Optional[float]
    speedup: Optional[float] = None  # reference seconds / these seconds
    note: str = ""


def run_decode(folder: Path, sources: list[Source], sizes: list[Size], repeats: int
               ) -> list[DecodeRow]:
    from megagoku.data.decode import DALI_CPU_CODECS, dali_missing, probe

    rows = []
    for source in sources:
        for codec in CODECS:
            path = clip_for(folder, codec, source)
            info = probe(path)
            for size in sizes:
                if size.frames > source.frames:
                    continue
                reference = None
                for backend in ("reference", "pyav", "dali"):
                    row = DecodeRow(path.name, info.bitrate_kbps / 1000, size.name, backend,
                                    None, None, None)
                    if backend == "dali" and (dali_missing() or codec not in DALI_CPU_CODECS):
                        row.note = "n/a: DALI's CPU decoder takes VP9, VP8, MJPEG" \
                            if not dali_missing() else "n/a: DALI not installed"
                        rows.append(row)
                        continue
                    result = _in_child(_decode_child, str(path), backend, size, repeats)
                    if "error" in result:
                        row.note = result["error"]
                    else:
                        row.seconds_per_sample = result["seconds"]
                        row.frames_per_s = size.frames / result["seconds"]
                        row.peak_mb = result["peak_mb"]
                        if backend == "reference":
                            reference = result["seconds"]
                        elif reference:
                            row.speedup = reference / result["seconds"]
                    rows.append(row)
                    print(format_decode_row(row), flush=True)
    return rows


def format_decode_row(r: DecodeRow) -> str:
    if r.seconds_per_sample is None:
        return f"{r.clip:<30}{r.bitrate_mbps:>6.1f}  {r.target:<12}{r.backend:<10}  {r.note}"
    ratio = f"{r.speedup:>7.1f}x" if r.speedup else f"{'':>8}"
    return (f"{r.clip:<30}{r.bitrate_mbps:>6.1f}  {r.target:<12}{r.backend:<10}"
            f"{r.seconds_per_sample:>9.3f}{r.frames_per_s:>9.0f}{ratio}{r.peak_mb:>9.0f}")


def _train_child(config: str, overrides: list[str], run_dir: str, queue) -> None:
    """In a fresh process: a short training run; its metrics and peak memory."""
    try:
        import logging

        logging.basicConfig(level=logging.WARNING)
        from megagoku.config import load_training_config
        from megagoku.train.trainer import train

        cfg = load_training_config(config, overrides)
        start = time.perf_counter()
        train(cfg, run_dir)
        wall = time.perf_counter() - start
        records = [json.loads(line)
                   for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        queue.put({"records": records, "wall_s": wall,
                   "main_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   # the largest process this one started and waited for: its data workers
                   "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                   / 1024})
    except Exception as e:  # noqa: BLE001
        queue.put({"error": f"{type(e).__name__}: {e}"})


@dataclass
class LoaderRow:
    data: str
    workers: Optional[int]
    wait_per_step: list[float]
    samples_per_s: list[float]
    main_peak_mb: float
    worker_peak_mb: float
    wall_s: float
    note: str = ""


def run_loader(folder: Path, source: Source, size: Size, tokens: int, steps: int,
               workers: list[int], root: Path) -> list[LoaderRow]:
    clip = clip_for(folder, "h264", source)
    config = str(root / "configs" / "tiny.yaml")
    common = [f"data.height={size.height}", f"data.width={size.width}",
              f"data.frames={size.frames}", f"data.tokens_per_step={tokens}",
              f"train.steps={steps}", "train.log_every=1", "train.max_minutes=0",
              "data.image_fraction=null"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.jsonl"
        row = {"path": str(clip), "caption": "a red square moving right", "kind": "video",
               "width": source.width, "height": source.height, "frames": source.frames,
               "fps": float(source.fps)}
        manifest.write_text("".join(json.dumps(row) + "\n" for _ in range(8)))
        runs = [("built-in shapes", None, common + ["data.kind=shapes"])]
        runs += [(clip.name, n, common + ["data.kind=manifest", f"data.manifest={manifest}",
                                          f"data.num_workers={n}"]) for n in workers]
        for i, (data, n, overrides) in enumerate(runs):
            result = _in_child(_train_child, config, overrides, str(Path(tmp) / f"run{i}"))
            if "error" in result:
                rows.append(LoaderRow(data, n, [], [], 0, 0, 0, result["error"]))
            else:
                records = result["records"]
                rows.append(LoaderRow(data, n, [r["data_wait_fraction"] for r in records],
                                      [r["samples_per_s"] for r in records],
                                      result["main_peak_mb"], result["worker_peak_mb"],
                                      result["wall_s"]))
            print(format_loader_row(rows[-1]), flush=True)
    return rows


def format_loader_row(r: LoaderRow) -> str:
    workers = "-" if r.workers is None else str(r.workers)
    if r.note:
        return f"{r.data:<30}{workers:>8}  {r.note}"
    waits = " ".join(f"{w:.2f}" for w in r.wait_per_step)
    later = r.samples_per_s[1:] or r.samples_per_s
    return (f"{r.data:<30}{workers:>8}{r.main_peak_mb:>10.0f}{r.worker_peak_mb:>10.0f}"
            f"{statistics.mean(later):>10.2f}{r.wall_s:>8.0f}  {waits}")


def run_manifest(folder: Path, rows: int) -> dict:
    """Seconds to open a manifest of `rows` records (the JSONL floor, then ManifestDataset up to
    its first sample), in this process."""
    from megagoku.config.schema import DataConfig
    from megagoku.data.files import ManifestDataset
    from megagoku.data.shapes_files import write_shapes_files

    data = folder / f"manifest-{rows}"
    manifest = data / "big.jsonl"
    if not manifest.is_file():
        small = write_shapes_files(data / "clips", DataConfig(image_fraction=0.3), 8)
        lines = small.read_text().splitlines()
        with open(manifest, "w") as f:
            for i in range(rows):
                row = json.loads(lines[i % len(lines)])
                row["path"] = f"clips/{row['path']}"
                row["caption"] = f"{row['caption']} #{i}"  # distinct records
                f.write(json.dumps(row) + "\n")
    size_mb = manifest.stat().st_size / 1e6
    start = time.perf_counter()
    with open(manifest) as f:
        parsed = sum(1 for line in f if json.loads(line))
    floor = time.perf_counter() - start
    start = time.perf_counter()
    dataset = ManifestDataset(DataConfig(kind="manifest", manifest=str(manifest)))
    opened = time.perf_counter() - start
    first = dataset[0]
    ours = time.perf_counter() - start
    assert parsed == len(dataset) == rows and first is not None
    return {"rows": rows, "mb": round(size_mb, 3), "json_floor_s": round(floor, 3),
            "open_s": round(opened, 3), "first_sample_s": round(ours, 3)}


def register(which) -> None:
    d = which.add_parser("data", help="the data path at realistic sizes: decoders, loader",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--clips-dir", default=os.path.join(tempfile.gettempdir(),
                                                       "megagoku-bench-clips"),
                   help="where the generated clips are kept between runs")
    d.add_argument("--only", choices=("decode", "loader", "manifest"),
                   help="one part (default: decode and loader)")
    d.add_argument("--manifest-rows", type=int, default=200_000,
                   help="records of the manifest part's generated manifest")
    d.add_argument("--source", action="append", metavar="WxH@FPS:SECONDS",
                   help=f"clips to decode (repeatable; default {' '.join(DEFAULT_SOURCES)})")
    d.add_argument("--target", action="append", metavar="HxWxFRAMES[:name]",
                   help=f"sample sizes (repeatable; default {' '.join(DEFAULT_TARGETS)})")
    d.add_argument("--repeats", type=int, default=3, help="timed reads per row (median)")
    d.add_argument("--loader-source", default=LOADER_SOURCE, metavar="WxH@FPS:SECONDS",
                   help=f"the H.264 clip of the loader runs (default {LOADER_SOURCE})")
    d.add_argument("--loader-size", default="64x64x16", metavar="HxWxFRAMES")
    d.add_argument("--tokens", type=int, default=8192, help="data.tokens_per_step of the runs")
    d.add_argument("--steps", type=int, default=6, help="training steps per loader run")
    d.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                   help="data.num_workers of the loader runs (default 0 1 2)")
    d.add_argument("--json", help="also write the rows to this file")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        sources = [Source.parse(s) for s in args.source or DEFAULT_SOURCES]
        sizes = [Size.parse(s) for s in args.target or DEFAULT_TARGETS]
        loader_source = Source.parse(args.loader_source)
        loader_size = Size.parse(args.loader_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.steps < 2 or args.tokens < 1 or any(w < 0 for w in args.workers):
        print("error: --repeats and --tokens must be positive, --steps at least 2, --workers "
              "at least 0", file=sys.stderr)
        return 2
    folder = Path(args.clips_dir)
    fresh = "; every row in a fresh process" if args.only != "manifest" else ""
    print(f"machine: {os.cpu_count()} CPUs{fresh}; clips in {folder}")
    report: dict = {"cpus": os.cpu_count()}
    if args.only in (None, "decode"):
        print(f"{'clip':<30}{'Mb/s':>6}  {'target':<12}{'backend':<10}{'s/sample':>9}"
              f"{'frames/s':>9}{'vs ref':>8}{'peak MB':>9}")
        rows = run_decode(folder, sources, sizes, args.repeats)
        report["decode"] = [asdict(r) for r in rows]
    if args.only in (None, "loader"):
        print(f"loader: tiny.yaml, 8 rows of the H.264 {loader_source.width}x"
              f"{loader_source.height} clip, {loader_size.height}x{loader_size.width}x"
              f"{loader_size.frames}, {args.tokens} tokens a step, {args.steps} steps")
        print(f"{'data':<30}{'workers':>8}{'main MB':>10}{'worker MB':>10}{'samples/s':>10}"
              f"{'wall s':>8}  data_wait_fraction per step")
        root = Path(__file__).resolve().parents[2]
        rows = run_loader(folder, loader_source, loader_size, args.tokens, args.steps,
                          args.workers, root)
        report["loader"] = [asdict(r) for r in rows]
    if args.only == "manifest":
        if args.manifest_rows < 1:
            print("error: --manifest-rows must be positive", file=sys.stderr)
            return 2
        r = run_manifest(folder, args.manifest_rows)
        print(f"manifest of {r['rows']:,} rows ({r['mb']} MB): json.loads floor "
              f"{r['json_floor_s']:.3f} s ({r['rows'] / r['json_floor_s']:,.0f} rows/s, "
              f"{r['mb'] / r['json_floor_s']:.1f} MB/s); ManifestDataset open "
              f"{r['open_s']:.3f} s ({r['open_s'] / r['json_floor_s']:.1f}x the floor, "
              f"{r['rows'] / r['open_s']:,.0f} rows/s), first sample read at "
              f"{r['first_sample_s']:.3f} s")
        report["manifest"] = r
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
