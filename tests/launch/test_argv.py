"""The argv that crosses a remote shell as one inert word (`launch/argv.py`)."""

import subprocess

import pytest

from megagoku.launch import argv

HOSTILE = ["train", "--set", "name=my run $(touch /tmp/x) `id` \"q\" 'q'\nline 2", "",
           "ünïcode", "--run-dir", "/runs/a b"]


def test_encode_and_decode_round_trip():
    word = argv.encode(HOSTILE)
    assert set(word[len(argv.PREFIX):]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuv"
                                               "wxyz0123456789+/=")
    assert argv.decode([word]) == HOSTILE
    assert argv.decode(["train", "--config", "x"]) == ["train", "--config", "x"]


def test_the_shell_encoding_of_run_sh_decodes_to_the_same_argv():
    """launchers/deepspeed/run.sh encodes with printf and base64, not Python."""
    word = subprocess.run(["bash", "-c", "printf '%s\\0' \"$@\" | base64 -w0", "_", *HOSTILE],
                          capture_output=True, text=True, check=True).stdout
    assert argv.decode([argv.PREFIX + word]) == HOSTILE


@pytest.mark.parametrize("bad", ["not base64!", "dHJhaW4="])  # the second lacks the final NUL
def test_a_malformed_argv_is_one_line(bad):
    with pytest.raises(SystemExit, match="not the base64 of a NUL-separated argv"):
        argv.decode([argv.PREFIX + bad])
