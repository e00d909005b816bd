"""`megagoku ablate rf-vs-ddpm` end to end at a tiny budget (both objectives trained, scored,
tabled and plotted), the step-ratio arithmetic, and its refusals."""

import json

import torch
from PIL import Image

from megagoku.cli import main
from megagoku.evaluation.ablation import AblationConfig, eval_steps, ratio_sentence, step_ratios


def curve(objective, values, key="fd"):
    return [{"objective": objective, "step": 100 * (i + 1), key: v, "accuracy": 0.0}
            for i, v in enumerate(values)]


def test_step_ratio_is_ddpm_steps_over_the_step_rf_first_matches():
    results = {"rf": curve("rf", [5.0, 3.0, 2.0, 1.0, 1.0]),
               "ddpm": curve("ddpm", [9.0, 6.0, 4.0, 3.0, 2.5])}
    fd = step_ratios(results)["fd"]
    assert fd["rf_reaches_ddpm_final"] == {"target": 2.5, "ddpm_step": 500, "at_step": 300,
                                           "ratio": 500 / 300}
    assert fd["ddpm_reaches_rf_final"]["at_step"] is None
    text = ratio_sentence(step_ratios(results), "fd", "fd_shapes")
    assert "at step 300: a step ratio of 1.67x" in text and "DDPM does not reach" in text
    assert "best" not in text  # DDPM's best is its final here
    # A noisy final score: DDPM's best (2.0 at step 400) is the harder target.
    noisy = {"rf": results["rf"], "ddpm": curve("ddpm", [9.0, 6.0, 4.0, 2.0, 2.5])}
    best = step_ratios(noisy)["fd"]["rf_reaches_ddpm_best"]
    assert best == {"target": 2.0, "ddpm_step": 400, "at_step": 300, "ratio": 400 / 300}
    assert "RF reaches DDPM's best (2.000, at its step 400) at step 300 (1.33x)" in \
        ratio_sentence(step_ratios(noisy), "fd", "fd_shapes")
    slower = {"rf": curve("rf", [9.0, 8.0]), "ddpm": curve("ddpm", [5.0, 4.0])}
    assert "RF does not reach DDPM's final" in ratio_sentence(step_ratios(slower), "fd", "fd")
    assert step_ratios({"rf": curve("rf", [1.0])}) == {}


def test_eval_steps_end_at_the_budget():
    assert eval_steps(AblationConfig(steps=1000, eval_every=300)) == [300, 600, 900, 1000]
    assert eval_steps(AblationConfig(steps=6, eval_every=3)) == [3, 6]


def test_tiny_ablation_end_to_end(tmp_path, classifier_cache, capsys):
    classifier_cache(AblationConfig().data)  # untrained: the plumbing is under test here
    out = tmp_path / "ablation"
    assert main(["ablate", "rf-vs-ddpm", "--steps", "4", "--eval-every", "2",
                 "--samples-per-class", "2", "--reference-per-class", "3", "--sample-steps", "2",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for objective in ("rf", "ddpm"):
        records = results["results"][objective]
        assert [r["step"] for r in records] == [2, 4]
        assert all(r["fd"] >= 0 and 0 <= r["accuracy"] <= 1 for r in records)
    assert set(results["step_ratios"]) == {"fd", "accuracy"}
    assert results["config"]["sample_steps"] == 2 and results["threads"] == torch.get_num_threads()
    table = (out / "table.md").read_text()
    assert "| step | RF fd_shapes | RF cond. acc. | DDPM fd_shapes | DDPM cond. acc. |" in table
    assert table.count("\n| 2 |") == 1 and table.count("\n| 4 |") == 1
    assert "Real-vs-real floor" in table and ("step ratio" in table or "does not reach" in table)
    assert Image.open(out / "plot.png").size[0] > 500
    # 12 classes x 2 samples: 12 rows of 2 images of 16 px, upscaled 4x.
    assert Image.open(out / "samples_ddpm.png").size == (2 * 64, 12 * 64)
    err = capsys.readouterr().err
    assert "[rf] step 4/4" in err and "[ddpm] step 4: fd_shapes" in err


def test_bad_options_stop_before_any_work(tmp_path, capsys):
    assert main(["ablate", "rf-vs-ddpm", "--steps", "10", "--eval-every", "20",
                 "--out", str(tmp_path / "x")]) == 2
    assert "eval-every: 20 is more than --steps 10" in capsys.readouterr().err
    assert main(["ablate", "rf-vs-ddpm", "--objectives", "rf,vae"]) == 2
    assert "objectives: must be some of rf, ddpm" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
