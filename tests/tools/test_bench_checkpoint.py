"""`megagoku bench checkpoint --ranks 2`: resume verification and commit latency, the old way and
ours, measured in the same run on two gloo ranks (no timing is asserted: the figures live in
BENCHMARKS.md; this checks that every line is measured and the ratios follow from them)."""

import re

import pytest

from megagoku.cli import main


@pytest.mark.slow
def test_bench_checkpoint_reports_verification_and_commit_latency(capsys):
    assert main(["bench", "checkpoint", "--mb", "4", "--saves", "2", "--ranks", "2"]) == 0
    out = capsys.readouterr().out
    printed = {name: re.search(rf"{name}.*?([0-9.]+) s \(", out).group(1)
               for name in ("rank 0 alone", "each rank its files", "the same reads unhashed")}
    seconds = {name: float(text) for name, text in printed.items()}
    assert all(v > 0 for v in seconds.values())
    faster = float(re.search(r"([0-9.]+)x faster", out).group(1))

    def half_digit(text: str) -> float:  # the rounding of a printed figure
        return 0.5 * 10.0 ** -len(text.partition(".")[2])

    old, ours = seconds["rank 0 alone"], seconds["each rank its files"]
    h_old, h_ours = half_digit(printed["rank 0 alone"]), half_digit(printed["each rank its files"])
    # the ratio of the unrounded times, as far as the printed figures allow (and its own rounding)
    assert (old - h_old) / (ours + h_ours) - 0.06 <= faster <= (old + h_old) / (ours - h_ours) + 0.06
    polled = float(re.search(r"polled every 20 ms \(before\): ([0-9.]+) ms", out).group(1))
    store = float(re.search(r"process group's store: +([0-9.]+) ms", out).group(1))
    assert polled > 0 and store > 0
    assert "resume verification on 2 ranks" in out and "commit latency on 2 ranks" in out
