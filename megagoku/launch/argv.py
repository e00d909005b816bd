"""An argv that survives a remote shell: `--argv-base64=B64`, alone on the command line, stands
for the arguments it encodes (each followed by a NUL byte, then base64).

DeepSpeed's multi-node pdsh runner joins the command into one string that ssh hands to each
node's shell, quoting only the arguments that hold a space (in double quotes, where `$()` and
backticks still run). `launchers/deepspeed/run.sh` therefore sends the whole argv as one word of
base64 (letters, digits, `+/=`: nothing a shell acts on), and `megagoku.cli` decodes it here."""

from __future__ import annotations

import base64
import binascii

PREFIX = "--argv-base64="


def encode(argv: list[str]) -> str:
    return PREFIX + base64.b64encode("".join(a + "\0" for a in argv).encode()).decode()


def decode(argv: list[str]) -> list[str]:
    """The argv `encode` made, or `argv` unchanged when it is not one."""
    if len(argv) != 1 or not argv[0].startswith(PREFIX):
        return argv
    try:
        text = base64.b64decode(argv[0][len(PREFIX):], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise SystemExit(f"error: {PREFIX}...: not the base64 of a NUL-separated argv") from None
    if text and not text.endswith("\0"):
        raise SystemExit(f"error: {PREFIX}...: not the base64 of a NUL-separated argv")
    return text.split("\0")[:-1]
