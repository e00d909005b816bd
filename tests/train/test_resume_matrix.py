"""Every checkpoint resumes under every layout: the save x load matrix of
tests/distributed/resume_matrix.py (README's table), each cell checked against the uninterrupted
run under the save layout.

The runs are made once per session for the cells selected: the one-process runs here, every
two-process run in one launch of two gloo ranks that rebuilds its grid between runs
(tests/distributed/resume_worker.py): the saves first, then every resume.
"""

import json
import time
from pathlib import Path

import pytest
import torch

from megagoku.config import load_training_config
from megagoku.data.packing import PackingLoader
from megagoku.models import build_latent_space
from megagoku.train.checkpoint import CheckpointReader
from megagoku.train.preflight import build_dataset
from tests.distributed import resume_matrix as mx
from tests.distributed.launch import ROOT, run_ranks, train_as_a_rank

CELLS = [pytest.param(s, l, id=f"{mx.slug(s)}->{mx.slug(l)}",
                      marks=() if (s, l) in mx.FAST else pytest.mark.slow)
         for s in mx.SAVES for l in mx.LOADS]


def config(layout: str):
    return load_training_config(ROOT / "configs/tiny.yaml", mx.overrides(layout))


@pytest.fixture(scope="module")
def matrix(request, tmp_path_factory) -> Path:
    """The runs of the cells this session selected; returns their root."""
    cells = sorted({(item.callspec.params["save"], item.callspec.params["load"])
                    for item in request.session.items
                    if item.module is request.module and hasattr(item, "callspec")
                    and "save" in item.callspec.params})
    root = tmp_path_factory.mktemp("matrix")
    saves = sorted({s for s, _ in cells} | {mx.INIT_FROM}, key=mx.SAVES.index)
    start = time.perf_counter()
    if "1 process" in saves:
        train_as_a_rank(config("1 process"), mx.run_dir(root, "1 process"))
    pairs = [[s, l] for s, l in cells if mx.processes(l) == 2]
    run_ranks(2, ["tests/distributed/resume_worker.py", json.dumps(
        {"root": str(root), "saves": [s for s in saves if mx.processes(s) == 2],
         "cells": pairs, "inits": list(mx.INITS)})], timeout=1500)
    for save, load in cells:
        if mx.processes(load) == 1:
            train_as_a_rank(config(load), mx.run_dir(root, save, load),
                        resume=str(mx.checkpoint(root, save, mx.RESUME_AT)))
    print(f"\nresume matrix: {len(saves)} saves, {len(cells)} resumes in "
          f"{time.perf_counter() - start:.0f} s")
    return root


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(run_dir / "checkpoints" / f"step_{mx.STEPS:08d}")
    return {key: reader.tensor(key) for key in reader.index}


def packed_indices(loader: PackingLoader, packs: int) -> tuple[set[int], dict]:
    """The global sample indices `loader` packs in its next `packs` packs, and its state after."""
    replica, replicas = loader.replica
    before = loader.state_dict()
    for _ in range(packs):
        loader.next_pack()
    after = loader.state_dict()
    read = set(before["window"]) | set(range(before["next_index"], after["next_index"]))
    return {i * replicas + replica for i in read - set(after["window"])}, after


def assert_sample_guarantee(save: str, load: str, root: Path) -> None:
    """The documented guarantee of a data-parallel change (`reshard_loader_states`), rebuilt here
    from the saved loader states alone: G is the first global index an old replica had not packed;
    every index before G was packed before the checkpoint, the new replicas start at G (each at
    the first index of its own stream from G on, nothing in its window), and their packs leave no
    hole. The resumed run's final loader states must be those of loaders started that way."""
    cfg = config(save)
    dataset = build_dataset(cfg)
    encode = build_latent_space(cfg.latent).encode

    def loader(replica, replicas, start):
        return PackingLoader(dataset, encode, cfg.model.patch_size, cfg.data.tokens_per_step,
                             start_index=start, replica=(replica, replicas),
                             window=cfg.data.pack_window)

    saved = CheckpointReader(mx.checkpoint(root, save, mx.RESUME_AT)).state["loader"]
    old, new = saved["replicas"], mx.data_parallel(load)
    assert old == mx.data_parallel(save) and old != new
    before = set()
    for r in range(old):
        packed, state = packed_indices(loader(r, old, 0), mx.RESUME_AT)
        assert state == saved["states"][r], "the saved loader state is not the uninterrupted one"
        before |= packed
    frontier = min(i for i in range(len(before) + 1) if i not in before)
    after, ends = set(), []
    final = CheckpointReader(mx.checkpoint(root, save, mx.STEPS, load)).state["loader"]
    assert final["replicas"] == new
    for r in range(new):
        first = -(-(frontier - r) // new)  # the first index i with i * new + r >= frontier
        packed, state = packed_indices(loader(r, new, first), mx.STEPS - mx.RESUME_AT)
        assert state == final["states"][r], (
            f"replica {r} of {new} did not continue from the frontier {frontier}")
        after |= packed
        ends.append(state["next_index"] * new + r)
    assert set(range(frontier)) <= before and min(after) >= frontier
    pending = {i * new + r for r in range(new) for i in final["states"][r]["window"]}
    hole = set(range(min(ends))) - before - after - pending
    assert not hole, f"samples skipped: {sorted(hole)}"


@pytest.mark.parametrize("save,load", CELLS)
def test_a_checkpoint_resumes_under_the_layout(save, load, matrix):
    uninterrupted = mx.run_dir(matrix, save)
    resumed = mx.run_dir(matrix, save, load)
    got, want = losses(resumed), losses(uninterrupted)
    assert sorted(got) == list(range(mx.RESUME_AT + 1, mx.STEPS + 1))
    promise = mx.promise(save, load)
    print(f"\n{save} -> {load} ({promise}): resumed losses "
          f"{[got[s] for s in sorted(got)]}, uninterrupted {[want[s] for s in sorted(got)]}")
    if promise == "samples":
        assert_sample_guarantee(save, load, matrix)
        # Every load layout of one data-parallel count continues the same way.
        for other in mx.LOADS:
            sibling = mx.run_dir(matrix, save, other)
            if other != load and mx.data_parallel(other) == mx.data_parallel(load) and \
                    (sibling / "checkpoints" / f"step_{mx.STEPS:08d}").is_dir():
                theirs = losses(sibling)
                for step in got:
                    assert got[step] == pytest.approx(theirs[step], **_approx()), (other, step)
        return
    ours, reference = final_tensors(resumed), final_tensors(uninterrupted)
    assert ours.keys() == reference.keys()
    if promise == "bit-identical":
        assert got == {s: want[s] for s in got}
        differ = [k for k in ours if not ours[k].equal(reference[k])]
        assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
        return
    for step in got:
        assert got[step] == pytest.approx(want[step], **_approx()), step
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], **mx.TOLERANCE, msg=key)


def _approx() -> dict:
    return {"abs": mx.LOSS_TOLERANCE["atol"], "rel": mx.LOSS_TOLERANCE["rtol"]}


def test_a_new_stage_takes_the_optimizer_state_under_zero2(matrix):
    """`checkpoint.init_from` + `init_optimizer` at ZeRO-2 (it crashed: issue 26): the moments and
    Adam's step count carry over, the new stage's learning rate is its own, and ZeRO-2 ends where
    plain data parallelism (torch's own AdamW state) ends."""
    zero2, plain = (mx.init_dir(matrix, layout) for layout in ("ZeRO-2", "DP=2"))
    ours, reference = final_tensors(zero2), final_tensors(plain)
    assert ours.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], **mx.TOLERANCE, msg=key)
    for run in (zero2, plain):
        optimizer = CheckpointReader(run / "checkpoints" / f"step_{mx.STEPS:08d}").state[
            "optimizer"]
        assert optimizer["step"] == mx.RESUME_AT + mx.STEPS
        assert optimizer["groups"][0]["initial_lr"] == mx.INIT_LR


def test_readme_table_is_the_matrix():
    """README's table of the layouts a checkpoint loads under is the one this matrix tests."""
    assert mx.render_table() in (ROOT / "README.md").read_text(), \
        "README.md's resume table differs: paste `python -m tests.distributed.resume_matrix`"
