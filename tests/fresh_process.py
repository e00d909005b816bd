"""Checks that need a process of their own: what an import loads, or leaves behind, is decided
once per process, so the suite's process (which has imported everything) cannot show it."""

import subprocess
import sys

from tests.distributed.launch import ROOT


def check_in_fresh_process(code: str) -> None:
    """Run `code` (its asserts) in a new interpreter at the repository's root; fail with its
    error if it fails."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
