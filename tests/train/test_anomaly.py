"""Loss anomalies: a NaN or a spike is skipped, rolled back or stops the run, as configured. A step
skipped in-process and a step skipped after a rollback leave the same bits as a run told to skip
that step from the start."""

import json
import math

import pytest
import torch

import megagoku.train.trainer as trainer_module
from megagoku.cli import main
from megagoku.parallel import ensure_single_process_groups
from megagoku.parallel.engine import TrainEngine
from megagoku.train.anomaly import SKIP_FILE, AnomalyDetector, add_skip_steps, read_skip_steps
from megagoku.train.trainer import TrainingAnomaly, train
from tests.train.test_resume import RUN, assert_identical, config, final_tensors


def poison_at(monkeypatch, step: int, factor: float = math.nan) -> None:
    """Training step `step`'s loss is multiplied by `factor` (a NaN, or a spike), once."""
    calls = {"n": 0}
    original = trainer_module.step_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, per_sample, t = original(*args, **kwargs)
        if calls["n"] == step:
            loss = loss * factor
        return loss, per_sample, t

    monkeypatch.setattr(trainer_module, "step_loss", poisoned)


@pytest.fixture(scope="module")
def told_to_skip_step_4(tmp_path_factory):
    """A run whose skip list (as a rollback writes it) names step 4 from the start."""
    run_dir = tmp_path_factory.mktemp("skip4")
    add_skip_steps(run_dir, [4], "told to")
    train(config(), run_dir, resume="auto")
    return run_dir


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_detector_flags_non_finite_values_and_spikes_after_its_window_fills():
    d = AnomalyDetector(spike_factor=3.0, window=3)
    assert "loss is nan" in d.judge(math.nan) and "loss is inf" in d.judge(math.inf)
    assert d.judge_gradient(math.inf) == "gradient norm is inf" and d.judge_gradient(2.0) is None
    for loss in (1.0, 1.2):
        assert d.judge(10.0) is None  # not judged before the window is full
        d.accept(loss)
    d.accept(0.8)
    assert d.judge(2.9) is None
    assert "3.1x the mean 1 of the last 3 steps" in d.judge(3.1)
    again = AnomalyDetector(3.0, 3)
    again.load_state_dict(json.loads(json.dumps(d.state_dict())))  # as a checkpoint carries it
    assert again.judge(3.1) == d.judge(3.1)
    assert AnomalyDetector(0.0, 3).judge(1e9) is None  # spikes off


def test_a_nan_step_is_skipped_leaving_the_bits_of_a_run_told_to_skip_it(
        told_to_skip_step_4, tmp_path, monkeypatch):
    poison_at(monkeypatch, 4)
    result = train(config(), tmp_path)
    assert result.steps == 6 and result.stop_reason == "done"
    assert_identical(final_tensors(tmp_path), final_tensors(told_to_skip_step_4))
    step4 = records(tmp_path)[3]
    assert step4["step"] == 4 and step4["anomalies"] == 1 and step4["skipped_steps"] == 1
    assert math.isnan(step4["loss"])  # nothing trained on in that window (log_every=1)
    assert not (tmp_path / SKIP_FILE).exists()  # skip: nothing to remember


def test_a_spike_rolls_back_to_the_checkpoint_and_skips_its_step(told_to_skip_step_4, tmp_path,
                                                                  monkeypatch):
    poison_at(monkeypatch, 4, factor=50.0)
    overrides = ["train.anomaly_response=rollback", "train.spike_factor=5",
                 "train.spike_window=2"]
    result = train(config(*overrides), tmp_path)
    assert result.stop_reason == "rollback" and result.steps == 4
    assert list(read_skip_steps(tmp_path)) == [4] and "train.spike_factor=5" in \
        read_skip_steps(tmp_path)[4]
    assert not (tmp_path / "checkpoints" / "step_00000004").exists()  # nothing saved after it
    result = train(config(*overrides), tmp_path, resume="auto")  # from step 2
    assert result.steps == 6 and result.stop_reason == "done"
    assert_identical(final_tensors(tmp_path), final_tensors(told_to_skip_step_4))


def test_one_process_cli_rolls_back_by_itself(told_to_skip_step_4, tmp_path, monkeypatch, capsys):
    poison_at(monkeypatch, 4)
    sets = [a for kv in RUN + ["train.anomaly_response=rollback"] for a in ("--set", kv)]
    assert main(["train", "--config", "configs/tiny.yaml", *sets, "--run-dir", str(tmp_path)]) == 0
    assert "rolling back to the newest valid checkpoint" in capsys.readouterr().err
    assert_identical(final_tensors(tmp_path), final_tensors(told_to_skip_step_4))


def test_stop_response_and_the_anomaly_limit_end_the_run_with_one_line(tmp_path, monkeypatch,
                                                                       capsys):
    poison_at(monkeypatch, 3)
    sets = [a for kv in RUN + ["train.anomaly_response=stop"] for a in ("--set", kv)]
    assert main(["train", "--config", "configs/tiny.yaml", *sets, "--run-dir",
                 str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'a'}: step 3: loss is nan (train.anomaly_response=stop)")
    poison_at(monkeypatch, 2)
    with pytest.raises(TrainingAnomaly, match=r"step 2: loss is nan \(1 anomalous steps, more "
                                              r"than train.max_anomalies=0\)"):
        train(config("train.max_anomalies=0"), tmp_path / "b")


def test_without_deepspeed_a_non_finite_gradient_is_not_applied():
    ensure_single_process_groups()
    model = torch.nn.Linear(4, 2)
    engine = TrainEngine(model, torch.optim.AdamW(model.parameters(), lr=0.1), 0, 1.0,
                         use_deepspeed=False)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(1, 4)).sum().backward()
    model.weight.grad[0, 0] = math.inf
    assert engine.step() == math.inf and not engine.applied_non_finite_update
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
