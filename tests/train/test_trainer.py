import json
from pathlib import Path

import pytest

from megagoku.config import ConfigError, load_training_config
from megagoku.train.checkpoint import load_checkpoint
from megagoku.train.trainer import lr_lambda, train

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["train.steps=250", "train.log_every=10", "train.warmup_steps=20", "train.max_minutes=0",
         "data.tokens_per_step=1024", "model.depth=2"]


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_writes_its_outputs(tmp_path):
    cfg = load_training_config(ROOT / "configs/tiny.yaml", SHORT)
    result = train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 251, 10))
    assert all({"loss", "lr", "grad_norm", "tokens_per_s"} <= r.keys() for r in records)
    first, last = records[0]["loss"], records[-1]["loss"]
    # Predicting the mean velocity (ignoring where the shape is) plateaus near 1.05; getting
    # well below it takes learning the data (measured: 0.16-0.18 over two seeds).
    assert first > 1.5 and last < 0.35, (first, last)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    config, state, ckpt = load_checkpoint(tmp_path)
    assert ckpt == result.checkpoint and ckpt.name == "step_00000250"
    assert config["model"]["depth"] == 2 and "blocks.1.mlp.fc2.weight" in state


def test_periodic_checkpoints_record_the_loader_position(tmp_path):
    cfg = load_training_config(ROOT / "configs/tiny.yaml",
                               SHORT + ["train.steps=4", "checkpoint.every=2",
                                        "data.image_fraction=0"])
    train(cfg, tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000002", "step_00000004"]
    # 1024-token packs of 128-token videos: 8 videos a step; the 9th read waits in the window.
    for name, consumed in zip(names, (16, 32)):
        state = json.loads((tmp_path / "checkpoints" / name / "state.json").read_text())
        assert state["loader"] == {"replicas": 1,
                                   "states": [{"next_index": consumed + 1, "window": [consumed]}]}


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = load_training_config(None, ["train.steps=100", "train.warmup_steps=10",
                                      "train.min_lr_ratio=0.1"]).train
    assert lr_lambda(cfg, 0) == 0.1 and lr_lambda(cfg, 9) == 1.0
    assert abs(lr_lambda(cfg, 100) - 0.1) < 1e-9
    assert 0.1 < lr_lambda(cfg, 55) < 1.0


def test_used_run_dir_is_refused_unless_overwritten(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9}\n')
    cfg = load_training_config(ROOT / "configs/tiny.yaml", SHORT + ["train.steps=2"])
    with pytest.raises(ConfigError, match="run dir already holds checkpoints, metrics.jsonl"):
        train(cfg, tmp_path)
    train(cfg, tmp_path, overwrite=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2]


def test_unknown_holdout_caption_is_a_config_error(tmp_path):
    cfg = load_training_config(ROOT / "configs/tiny.yaml", ["data.holdout=['purple cube moving up']"])
    with pytest.raises(ConfigError, match="data.holdout: 'purple cube moving up'"):
        train(cfg, tmp_path / "run", source="cfg.yaml")
    assert not (tmp_path / "run").exists()


def test_same_seed_same_run(tmp_path):
    cfg = load_training_config(ROOT / "configs/tiny.yaml", SHORT + ["train.steps=6",
                                                                    "train.log_every=2"])
    runs = []
    for name in ("a", "b"):
        train(cfg, tmp_path / name)
        runs.append([json.loads(line)["loss"]
                     for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert runs[0] == runs[1] and len(runs[0]) == 3
    other = load_training_config(ROOT / "configs/tiny.yaml", SHORT + ["train.steps=6",
                                                                      "train.log_every=2",
                                                                      "train.seed=1"])
    train(other, tmp_path / "c")
    assert [json.loads(line)["loss"] for line in
            (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()] != runs[0]


def test_training_on_manifest_files_skips_and_counts_a_missing_file(tmp_path):
    from megagoku.data.shapes_files import write_shapes_files

    cfg = load_training_config(ROOT / "configs/tiny.yaml")
    manifest = write_shapes_files(tmp_path / "data", cfg.data, 12)
    with open(manifest, "a") as f:
        f.write(json.dumps({"path": "clips/gone.webm", "caption": "a red circle moving up",
                            "kind": "video", "width": 16, "height": 16, "frames": 8,
                            "fps": 8}) + "\n")
    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "data.kind=manifest", f"data.manifest={manifest}", "train.steps=4", "train.log_every=2",
        "model.depth=1"])
    result = train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert result.steps == 4 and all(r["loss"] > 0 for r in records)
    # 4 steps of ~16 samples go through the 13 records several times: the gone one each time.
    assert records[-1]["data_skipped"] >= 2
    last = records[-1]  # per backend and reason: webm through DALI, mp4 through PyAV
    assert last["data/skipped_missing"] == last["data_skipped"]
    assert last["data/decoded_dali"] > 0 and last["data/decoded_pyav"] > 0
    assert last["data/decoded_pillow"] > 0


def test_a_missing_manifest_is_a_config_error(tmp_path):
    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "data.kind=manifest", f"data.manifest={tmp_path / 'none.jsonl'}"])
    with pytest.raises(ConfigError, match=r"^cfg.yaml: data.manifest: .*none.jsonl: no such "
                                          r"manifest$"):
        train(cfg, tmp_path / "run", source="cfg.yaml")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="data.manifest: kind: manifest needs the path"):
        load_training_config(ROOT / "configs/tiny.yaml", ["data.kind=manifest"])


def test_manifest_data_that_cannot_train_stops_before_work(tmp_path, monkeypatch):
    import megagoku.data.decode as decode
    from megagoku.data.shapes_files import write_shapes_files

    cfg = load_training_config(ROOT / "configs/tiny.yaml", ["data.image_fraction=1.0"])
    manifest = write_shapes_files(tmp_path / "data", cfg.data, 3)  # images only
    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "data.kind=manifest", f"data.manifest={manifest}", "model.patch_size=[2,4,4]",
        "data.image_fraction=null"])
    with pytest.raises(ConfigError, match=r"model.patch_size: \[2, 4, 4\] patches 2 frames at "
                                          r"once, but .* holds images"):
        train(cfg, tmp_path / "run", source="cfg.yaml")
    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "data.kind=manifest", f"data.manifest={manifest}", "data.image_fraction=0.5"])
    with pytest.raises(ConfigError, match=r"cfg.yaml: data.image_fraction: 0.5 asks for videos, "
                                          r"but .*manifest.jsonl holds none"):
        train(cfg, tmp_path / "run", source="cfg.yaml")
    monkeypatch.setattr(decode, "dali_missing", lambda: "No module named 'nvidia.dali'")
    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "data.kind=manifest", f"data.manifest={manifest}", "data.decode_backend=dali"])
    with pytest.raises(ConfigError, match="data.decode_backend: dali, but NVIDIA DALI is not "
                                          "installed"):
        train(cfg, tmp_path / "run", source="cfg.yaml")
    assert not (tmp_path / "run").exists()


def test_metrics_report_flops_and_mfu_against_the_configured_peak(tmp_path):
    from megagoku.models.flops import flops_per_token

    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "train.steps=4", "train.log_every=2", "train.max_minutes=0", "data.tokens_per_step=512",
        "model.depth=2", "train.peak_tflops=0.5"])
    train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert r["mfu"] == pytest.approx(r["tflops_per_device"] / 0.5, rel=1e-3)
        # FLOPs per step: about a full pack of 16x16x8 videos (128 tokens, 16-token captions).
        per_step = r["tflops_per_device"] * 1e12 / r["steps_per_s"]
        expected = 512 * flops_per_token(cfg.model, 128, 16)["train"]
        assert 0.5 * expected < per_step < 1.5 * expected, (per_step, expected)
