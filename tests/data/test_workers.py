"""Reading in data workers (issue 24): the packs do not depend on how many workers read; a resume
with workers (after the workers of the first run were killed holding read-ahead samples) yields
the packs of an uninterrupted run; a corrupt file inside a worker is a counted skip that reaches
the loader's counts; a worker that dies or stalls, and a manifest whose files are all unreadable,
are one clear line each. Multi-process: run under `flock /work/heavy.lock` on shared machines."""

import os
import re
import signal
import time
from dataclasses import replace

import pytest
import torch

from megagoku.config import DataConfig
from megagoku.data import PackingLoader, ShapesDataset
from megagoku.data.errors import DataError
from megagoku.data.files import ManifestDataset
from megagoku.data.prefetch import PackFeed
from megagoku.data.shapes_files import write_shapes_files
from megagoku.data.workers import ReadOptions

CFG = DataConfig(height=16, width=16, frames=9, image_fraction=0.25, seed=5)
PATCH = (1, 4, 4)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("files")
    path = write_shapes_files(out, CFG, 12, fps=8)
    clip = next((out / "clips").glob("*.webm"))
    (out / "clips" / "corrupt.webm").write_bytes(clip.read_bytes()[:300])
    with open(path, "a") as f:  # a truncated file among the good ones
        f.write('{"path": "clips/corrupt.webm", "caption": "a red circle moving up", '
                '"kind": "video", "width": 16, "height": 16, "frames": 9, "fps": 8}\n')
    return path


def data_cfg(manifest) -> DataConfig:
    return replace(CFG, kind="manifest", manifest=str(manifest), image_fraction=None)


def make_loader(manifest, workers: int, window: int = 4, **options) -> PackingLoader:
    reading = ReadOptions(workers=workers, batch=options.pop("batch", 3), **options)
    return PackingLoader(ManifestDataset(data_cfg(manifest)), lambda x: x, PATCH, 400,
                         window=window, reading=reading)


def same_packs(a, b) -> None:
    assert a.captions == b.captions and a.kinds == b.kinds
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.positions, b.positions)
    assert torch.equal(a.cu_seqlens, b.cu_seqlens)


def test_packs_with_0_and_2_workers_are_identical(manifest):
    inline, workers = make_loader(manifest, 0), make_loader(manifest, 2)
    try:
        for _ in range(8):  # 8 packs of ~3 samples: twice through the 13 records
            same_packs(inline.next_pack(), workers.next_pack())
        assert inline.state_dict() == workers.state_dict()
        assert inline.skipped == workers.skipped > 0
        # The corrupt file was skipped inside a worker: its count reached this process.
        assert workers.decode_stats == inline.decode_stats
        assert workers.decode_stats.skipped["unreadable"] == workers.skipped
        assert workers.decode_stats.decoded["dali"] > 0 and workers.decode_stats.decoded["pyav"] > 0
    finally:
        workers.close()


def test_ctrl_c_reaching_the_workers_leaves_them_reading(manifest):
    # A terminal's Ctrl-C goes to the whole process group; the training process saves at the
    # end of its step (issue 22, case 2), which needs the workers it reads from still there.
    inline, workers = make_loader(manifest, 0), make_loader(manifest, 2)
    try:
        same_packs(inline.next_pack(), workers.next_pack())
        for process in workers._reads._iterator._workers:
            os.kill(process.pid, signal.SIGINT)
        time.sleep(0.5)
        for _ in range(4):
            same_packs(inline.next_pack(), workers.next_pack())
        assert all(p.is_alive() for p in workers._reads._iterator._workers)
    finally:
        workers.close()


def test_a_resume_with_workers_yields_the_packs_of_the_uninterrupted_run(manifest):
    straight = make_loader(manifest, 2)
    first = PackFeed(make_loader(manifest, 2), "cpu", ahead=1)  # packs built ahead in a thread
    try:
        expected = [straight.next_pack() for _ in range(7)]
        for pack in expected[:3]:
            same_packs(first.next_pack(), pack)
        time.sleep(1.0)  # the thread and the workers read ahead of what was taken
        state = first.state_dict()
        assert state == {"next_index": state["next_index"], "window": state["window"]}
        assert first.loader.next_index > state["next_index"]  # read ahead, not in the state
        for process in first.loader._reads._iterator._workers:  # the kill
            os.kill(process.pid, signal.SIGKILL)
    finally:
        first.close()
        straight.close()
    resumed = make_loader(manifest, 2)
    resumed.load_state_dict(state)
    try:
        for pack in expected[3:]:
            same_packs(resumed.next_pack(), pack)
    finally:
        resumed.close()


class MisbehavesAt(ShapesDataset):
    """Built-in shapes; reading sample `index` calls `misbehave()` first."""

    def __init__(self, cfg, index):
        super().__init__(cfg)
        self.index = index

    def __getitem__(self, index):
        if index == self.index:
            self.misbehave()
        return super().__getitem__(index)


class DiesAt(MisbehavesAt):
    """Reading sample `index` kills the worker process."""

    def misbehave(self):
        os.kill(os.getpid(), signal.SIGKILL)


class StallsAt(MisbehavesAt):
    """Reading sample `index` stalls the worker for two minutes."""

    def misbehave(self):
        time.sleep(120)


def test_a_worker_that_dies_is_one_clear_line():
    loader = PackingLoader(DiesAt(DataConfig(), 6), lambda x: x, PATCH, 256,
                           reading=ReadOptions(workers=2, batch=2))
    with pytest.raises(DataError) as e:
        for _ in range(10):
            loader.next_pack()
    message = str(e.value)
    assert "\n" not in message
    # Its worker had samples 2-3 and 6-7; the kill may have lost 2-3 on their way out.
    assert re.fullmatch(r"data: a data worker died \(pid \d+, killed by SIGKILL\) holding "
                        r"samples (2, 3, )?6, 7 unread \(the first: sample [26]\)", message), \
        message


def test_a_stalled_worker_is_one_clear_line_after_the_timeout():
    calls = []
    loader = PackingLoader(StallsAt(DataConfig(), 4), lambda x: x, PATCH, 256,
                           reading=ReadOptions(workers=1, batch=1, prefetch=1, timeout_s=8),
                           progress=calls.append)
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        for _ in range(10):
            loader.next_pack()
    message = str(e.value)
    assert "\n" not in message and time.perf_counter() - start < 90
    # 8 s: a spawned worker's start (importing torch) on a loaded 2-core machine is not a stall
    assert re.match(r"data: the 1 data workers handed over nothing for \d+ s while reading "
                    r"sample 4: a worker is stuck \(limit: data.worker_timeout_s = 8\)",
                    message), message
    assert calls and set(calls) == {"data"}  # the wait reported progress


def test_a_manifest_whose_files_are_all_unreadable_is_one_clear_line(tmp_path):
    # Issue 22, case 7: was a RuntimeError traceback.
    rows = [f'{{"path": "gone{i}.mp4", "caption": "c", "kind": "video", "width": 16, '
            f'"height": 16, "frames": 9, "fps": 8}}' for i in range(3)]
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    loader = PackingLoader(ManifestDataset(data_cfg(tmp_path / "m.jsonl")), lambda x: x, PATCH,
                           400)
    with pytest.raises(DataError) as e:
        loader.next_pack()
    assert str(e.value) == ("data: 100 samples in a row could not be read (up to index 99) "
                            "(skipped so far: 100 missing): the data is broken, not a few files; "
                            "the warnings above name each file")


def test_a_pack_feed_built_ahead_hands_out_the_packs_and_states_of_one_built_when_asked():
    def shapes_loader():
        return PackingLoader(ShapesDataset(DataConfig(image_fraction=0.5)), lambda x: x, PATCH,
                             300, window=8)

    now, ahead = PackFeed(shapes_loader(), "cpu"), PackFeed(shapes_loader(), "cpu", ahead=2)
    try:
        assert now.ahead == 0
        for _ in range(5):
            same_packs(now.next_pack(), ahead.next_pack())
            assert now.state_dict() == ahead.state_dict()
            assert now.skipped == ahead.skipped
    finally:
        ahead.close()


def test_on_a_gpu_samples_are_pinned_as_they_leave_the_workers(monkeypatch):
    # The DataLoader's pinning thread calls Fetched.pin_memory (a CPU torch cannot pin: the
    # page-locking itself is stood in for, the wiring is what is checked).
    from megagoku.data.decode import DecodeStats
    from megagoku.data.files import FileSample
    from megagoku.data.workers import Fetched

    assert ReadOptions.from_config(DataConfig(num_workers=3), "cuda") == ReadOptions(
        workers=3, prefetch=2, batch=4, timeout_s=300.0, pin_memory=True)
    assert not ReadOptions.from_config(DataConfig(), "cpu").pin_memory
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory",
                        lambda self: pinned.append(self.shape) or self.clone())
    stats = DecodeStats()
    stats.decoded["pyav"] += 1
    sample = FileSample(torch.zeros(3, 2, 4, 4), "a caption", "video")
    out = Fetched(7, sample, stats).pin_memory()
    assert pinned == [(3, 2, 4, 4)] and out.index == 7 and out.stats is stats
    assert out.sample.caption == "a caption" and out.sample.pixels is not sample.pixels
    assert Fetched(8, None).pin_memory().sample is None
