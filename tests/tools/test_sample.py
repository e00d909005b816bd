"""`megagoku sample` with a prompts file: every prompt x seed lands in the folder, each file the
same as sampling that prompt and seed alone, with a progress line; bad prompt files are refused
before anything loads."""

import numpy as np
import pytest
from PIL import Image

from megagoku.cli import main
from megagoku.train.trainer import train
from tests.train.test_resume import config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(config(), path)
    return path


def frames_of(path):
    image = Image.open(path)
    return [np.asarray(image.seek(i) or image.convert("RGB")) for i in range(image.n_frames)]


def test_prompt_file_gives_every_prompt_and_seed_as_alone(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# shapes\na red circle moving left\n\na blue square moving up\n")
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(run_dir), "--prompts", str(prompts), "--out",
                 str(out), "--format", "gif", "--seeds", "2", "--seed", "5", "--steps", "2",
                 "--batch", "3", "--upscale", "1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000_a_red_circle_moving_left_seed5.gif",
                     "000_a_red_circle_moving_left_seed6.gif",
                     "001_a_blue_square_moving_up_seed5.gif",
                     "001_a_blue_square_moving_up_seed6.gif"]
    err = capsys.readouterr().err
    assert "samples 1-3 of 4: step 2/2" in err and "samples 4-4 of 4: step 2/2" in err
    alone = tmp_path / "alone.gif"
    assert main(["sample", "--checkpoint", str(run_dir), "--prompt", "a blue square moving up",
                 "--out", str(alone), "--seed", "6", "--steps", "2", "--upscale", "1"]) == 0
    batched = frames_of(out / "001_a_blue_square_moving_up_seed6.gif")
    assert len(batched) == 8 and all(np.array_equal(a, b)
                                     for a, b in zip(batched, frames_of(alone)))


def test_bad_prompt_files_are_refused(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompts", str(empty), "--out",
                 str(tmp_path / "o")]) == 2
    assert "no prompts (one per line" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompts", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty.write_text("a red circle moving left\n")
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompts", str(empty), "--out",
                 str(tmp_path / "o.gif")]) == 2
    assert "with --prompts, --out is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_guidance_scale_that_is_not_finite_is_refused(tmp_path, capsys, value):
    """Issue 22, case 12: `--cfg nan` wrote an all-black file and exited 0."""
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompt", "x", f"--cfg={value}",
                 "--out", str(tmp_path / "o.gif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --cfg: must be a finite number")
    assert not (tmp_path / "o.gif").exists()


def test_an_unwritable_out_is_one_line_before_any_work(run_dir, tmp_path, capsys):
    """Issue 22, case 15: `sample --out` in a place that cannot be written."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out, args in ((blocker / "o.gif", ["--prompt", "a red circle moving left"]),
                      (blocker / "folder", ["--prompts", str(blocker)])):
        assert main(["sample", "--checkpoint", str(run_dir), *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --out: cannot write into "), err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without GPU")
def test_device_cuda_without_a_gpu_is_one_line(run_dir, tmp_path, capsys):
    """Issue 22, case 15."""
    assert main(["sample", "--checkpoint", str(run_dir), "--prompt", "x", "--device", "cuda",
                 "--out", str(tmp_path / "o.gif")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --device cuda: device 'cuda' asked for, but torch sees no GPU"]


def test_a_line_per_step_and_a_warning_when_the_work_is_large(run_dir, tmp_path, capsys):
    """Issue 22, case 17: 512x512 on a CPU showed nothing for minutes."""
    from megagoku.inference import load_generator
    from megagoku.train.checkpoint import load_checkpoint
    from megagoku.tools.sample import work_warning

    assert main(["sample", "--checkpoint", str(run_dir), "--prompt", "a red circle moving left",
                 "--steps", "8", "--out", str(tmp_path / "o.gif")]) == 0
    err = capsys.readouterr().err
    assert all(f"samples 1-1 of 1: step {k}/8," in err for k in range(1, 9)), err
    assert "warning" not in err  # 16x16: small work
    generator = load_generator(*load_checkpoint(run_dir)[:2], "run")
    warning = work_warning(generator, 1, 8, 512, 512, True, "cpu")
    assert warning.startswith("warning: 1 sample(s) of 8x512x512 are 131072 tokens each, ")
    assert "TFLOP per Euler step on the CPU" in warning
    assert work_warning(generator, 1, 8, 512, 512, True, "cuda") is None


def test_sample_says_which_weights_and_refuses_ones_a_model_dir_lacks(run_dir, tmp_path,
                                                                      capsys):
    from megagoku.train.export import consolidate

    raw = consolidate(run_dir, tmp_path / "raw", weights="model", progress=False)
    args = ["sample", "--prompt", "a red circle moving left", "--steps", "1", "--upscale", "1"]
    assert main([*args, "--checkpoint", str(raw), "--out", str(tmp_path / "a.gif")]) == 0
    assert "raw (non-EMA) weights" in capsys.readouterr().out
    assert main([*args, "--checkpoint", str(raw), "--out", str(tmp_path / "b.gif"),
                 "--weights", "ema"]) == 2
    assert "--weights ema: " in capsys.readouterr().err and not (tmp_path / "b.gif").exists()
    assert main([*args, "--checkpoint", str(run_dir), "--out", str(tmp_path / "c.gif")]) == 0
    assert ", EMA weights)" in capsys.readouterr().out
