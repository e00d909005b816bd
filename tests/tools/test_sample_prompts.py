"""`sample --prompts FILE`: a file that is not UTF-8 is one line naming the file and the line; a
UTF-8 byte-order mark is dropped, so a first-line `# comment` stays a comment."""

import pytest

from megagoku.cli import main
from megagoku.config import ConfigError
from megagoku.tools.sample import read_prompts


def test_a_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeff# shapes\na red circle moving left\r\nun carré bleu\n".encode("utf-8"))
    assert read_prompts(str(path)) == ["a red circle moving left", "un carré bleu"]


@pytest.mark.parametrize("data,line", [(b"a red circle\n\xff\xfe broken\n", 2),
                                       ("caf\u00e9\n".encode("latin-1"), 1),
                                       (b"\xef\xbb", 1)])
def test_text_that_is_not_utf8_is_one_line(tmp_path, capsys, data, line):
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=f"--prompts {path}: line {line}: not UTF-8 text"):
        read_prompts(str(path))
    # Through the command: refused before any checkpoint is opened, in one line.
    assert main(["sample", "--checkpoint", str(tmp_path / "none"), "--prompts", str(path),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --prompts {path}: line {line}")
