from pathlib import Path

import pytest

from megagoku.config import (ConfigError, load_model_config, load_training_config,
                             load_vae_training_config)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_configs_load():
    cfg = load_training_config(ROOT / "configs/tiny.yaml")
    assert cfg.model.name == "tiny" and cfg.model.text_dim == 384 and cfg.data.height == 16
    for name in ("goku_1b", "goku_2b", "goku_8b", "tiny"):
        load_model_config(ROOT / f"configs/models/{name}.yaml")
    assert load_model_config(ROOT / "configs/models/goku_8b.yaml").num_heads == 48


def test_overrides_apply_to_preset_and_sections():
    cfg = load_training_config(ROOT / "configs/tiny.yaml",
                               ["model.depth=2", "train.lr=3e-4", "data.displacement=[0.2, 0.3]"])
    assert cfg.model.depth == 2 and cfg.model.hidden_size == 128
    assert cfg.train.lr == 3e-4 and cfg.data.displacement == (0.2, 0.3)


def test_unknown_key_names_file_and_field(tmp_path):
    path = write(tmp_path, "model: models/tiny.yaml\ntrain:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_training_config(path)
    assert str(e.value).startswith(f"{path}: train.stepz: unknown key")
    assert "\n" not in str(e.value)


def test_wrong_type_names_field(tmp_path):
    path = write(tmp_path, "train:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: train.steps: expected int, got 'many'"):
        load_training_config(path)
    path = write(tmp_path, "train:\n  steps: true\n")  # a bool is not an int
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        load_training_config(path)
    path = write(tmp_path, "model:\n  patch_size: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"model.patch_size: expected a list of 3 ints"):
        load_training_config(path)
    path = write(tmp_path, "model:\n  attention_backend: fast\n")
    with pytest.raises(ConfigError, match="model.attention_backend: expected one of"):
        load_training_config(path)


def test_a_tuple_of_any_length_takes_a_list_of_its_item_type():
    """`tuple[int, ...]` (the VAE's channel_multipliers: one per level) takes any length, each
    item coerced and named when wrong; fixed tuples keep their length (above)."""
    vae = ROOT / "configs/vae/tiny.yaml"
    cfg = load_vae_training_config(vae, ["vae.channel_multipliers=[1, 2, 4]",
                                         "vae.patch_size=2"])
    assert cfg.vae.channel_multipliers == (1, 2, 4)
    with pytest.raises(ConfigError, match=r"vae.channel_multipliers\[1\]: expected int, got 'x'"):
        load_vae_training_config(vae, ["vae.channel_multipliers=[1, x, 4]"])
    with pytest.raises(ConfigError, match=r"vae.channel_multipliers: expected a list of ints"):
        load_vae_training_config(vae, ["vae.channel_multipliers=3"])


def test_impossible_combinations_are_rejected(tmp_path):
    path = write(tmp_path, "model:\n  preset: models/tiny.yaml\n  num_heads: 5\n")
    with pytest.raises(ConfigError, match=r"model.num_heads: 5 does not divide hidden_size 128"):
        load_training_config(path)
    with pytest.raises(ConfigError, match=r"model.rope_split"):
        load_training_config(ROOT / "configs/tiny.yaml", ["model.rope_split=[8, 8, 8]"])
    with pytest.raises(ConfigError, match=r"model.in_channels: 16 differs"):
        load_training_config(ROOT / "configs/tiny.yaml", ["model.in_channels=16"])
    with pytest.raises(ConfigError, match=r"model.patch_size: \[1, 4, 4\] does not divide the "
                                          r"latent 8x18x16 of video 8x18x16"):
        load_training_config(ROOT / "configs/tiny.yaml", ["data.height=18"])
    vae = ["latent.kind=causal_vae", "latent.path=vae", "latent.channels=16",
           "model.in_channels=16"]
    with pytest.raises(ConfigError, match=r"data: video 8x16x16 does not fit the latent space's "
                                          r"4x8x8 compression"):
        load_training_config(ROOT / "configs/tiny.yaml", vae)
    with pytest.raises(ConfigError, match=r"model.patch_size: \[1, 4, 4\] does not divide the "
                                          r"latent 3x2x2 of video 9x16x16"):
        load_training_config(ROOT / "configs/tiny.yaml", vae + ["data.frames=9"])
    with pytest.raises(ConfigError, match=r"latent.path: kind: causal_vae needs the path"):
        load_training_config(ROOT / "configs/tiny.yaml", vae[:1])
    with pytest.raises(ConfigError, match=r"data.image_fraction"):
        load_training_config(ROOT / "configs/tiny.yaml", ["model.patch_size=[2, 4, 4]"])


def test_resolution_tiers_are_typed_sections_checked_one_by_one():
    base = ["data.kind=manifest", "data.manifest=m.jsonl"]
    cfg = load_training_config(ROOT / "configs/tiny.yaml", base + [
        "data.tiers=[{kind: video, height: 16, width: 32, frames: 4, weight: 3}, "
        "{kind: image, height: 32, width: 32}]"])
    assert cfg.data.targets("video") == [(4, 16, 32, 3.0)]
    assert cfg.data.targets("image") == [(1, 32, 32, 1.0)]
    with pytest.raises(ConfigError, match=r"data.tiers\[1\].weight: must be positive, got 0.0"):
        load_training_config(ROOT / "configs/tiny.yaml", base + [
            "data.tiers=[{kind: video}, {kind: image, weight: 0}]"])
    with pytest.raises(ConfigError, match=r"data.tiers\[0\].colour: unknown key"):
        load_training_config(ROOT / "configs/tiny.yaml", base + ["data.tiers=[{colour: red}]"])
    with pytest.raises(ConfigError, match=r"cannot hold one video 8x64x64 \(2048 tokens\)"):
        load_training_config(ROOT / "configs/tiny.yaml", base + [
            "data.tiers=[{kind: video, height: 64, width: 64, frames: 8}]",
            "data.tokens_per_step=512"])
    with pytest.raises(ConfigError, match=r"data.tiers: resolution tiers apply to manifest"):
        load_training_config(ROOT / "configs/tiny.yaml", ["data.tiers=[{kind: video}]"])


def test_bad_yaml_and_missing_preset_name_the_file(tmp_path):
    path = write(tmp_path, "train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: invalid YAML \(line"):
        load_training_config(path)
    path = write(tmp_path, "model: models/nope.yaml\n")
    with pytest.raises(ConfigError, match=r"model.preset: no such preset file 'models/nope.yaml'"):
        load_training_config(path)
    with pytest.raises(ConfigError, match=r"--set oops: expected section.key=value"):
        load_training_config(ROOT / "configs/tiny.yaml", ["oops"])


def test_yaml_spellings_users_write(tmp_path):
    cfg = load_training_config(ROOT / "configs/tiny.yaml",
                               ["name=2024", "train.lr=3e-4", "model=models/goku_2b.yaml",
                                "latent.channels=16", "model.text_dim=384",
                                "data.image_fraction=0", "data.tokens_per_step=4096"])
    assert cfg.name == "2024" and cfg.train.lr == 3e-4 and cfg.model.depth == 28
    path = write(tmp_path, "model: models/tiny.yaml\ntrain:\n")  # an empty section
    assert load_training_config(path).train.steps == 1000
    with pytest.raises(ConfigError, match="train.lr: expected a finite float, got nan"):
        load_training_config(ROOT / "configs/tiny.yaml", ["train.lr=nan"])


def test_token_budget_must_hold_one_video():
    with pytest.raises(ConfigError, match=r"data.tokens_per_step: 100 cannot hold one video "
                                          r"8x16x16 \(128 tokens"):
        load_training_config(ROOT / "configs/tiny.yaml", ["data.tokens_per_step=100"])


def test_a_renamed_key_still_reads_with_one_warning_line(tmp_path, caplog):
    path = write(tmp_path, "model: models/tiny.yaml\nparallel:\n  checkpoint_every: 2\n")
    with caplog.at_level("WARNING", logger="megagoku.config.loader"):
        for _ in range(2):  # one line per file, however often it is read
            assert load_training_config(path).parallel.activation_checkpoint_every == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: parallel.checkpoint_every is deprecated, read as "
        "parallel.activation_checkpoint_every (rename it: the old name will go)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="megagoku.config.loader"):
        cfg = load_training_config(ROOT / "configs/tiny.yaml", ["parallel.checkpoint_every=3"])
    assert cfg.parallel.activation_checkpoint_every == 3 and len(caplog.records) == 1
    assert "(--set): parallel.checkpoint_every is deprecated" in caplog.records[0].getMessage()
    both = write(tmp_path, "model: models/tiny.yaml\nparallel:\n  checkpoint_every: 2\n"
                 "  activation_checkpoint_every: 2\n", "both.yaml")
    with pytest.raises(ConfigError, match="both.yaml: parallel.checkpoint_every: renamed "
                                          "parallel.activation_checkpoint_every, which is given "
                                          "too: keep only parallel.activation_checkpoint_every"):
        load_training_config(both)


def test_new_configs_get_the_released_block_and_saved_ones_without_its_keys_the_earlier_one():
    from megagoku.config import ModelConfig, saved_training_config, to_dict
    from megagoku.config.schema import LEGACY_BLOCK, RELEASED_BLOCK

    assert ModelConfig().released_block
    for name in ("goku_1b", "goku_2b", "goku_8b", "tiny"):
        text = (ROOT / f"configs/models/{name}.yaml").read_text()
        assert all(f"\n{key}: " in text for key in RELEASED_BLOCK), name  # said, not defaulted
        assert load_model_config(ROOT / f"configs/models/{name}.yaml").released_block
    saved = to_dict(load_training_config(ROOT / "configs/tiny.yaml"))
    assert saved_training_config(saved, "<saved>").model.released_block  # new saves say so
    # A config saved before the keys existed (to_dict of every field it had) is the earlier
    # block, whatever today's defaults are.
    for key in LEGACY_BLOCK:
        del saved["model"][key]
    old = saved_training_config(saved, "<old checkpoint>").model
    assert {key: getattr(old, key) for key in LEGACY_BLOCK} == LEGACY_BLOCK
    assert not old.released_block
    assert load_training_config(None, ["model.qk_norm=per_head"]).model.qk_norm == "per_head"


def test_block_keys_are_checked(tmp_path):
    path = write(tmp_path, "model:\n  preset: models/tiny.yaml\n  qk_norm: per_token\n")
    with pytest.raises(ConfigError, match=f"{path}: model.qk_norm: expected one of "
                                          "'whole_width', 'per_head'"):
        load_training_config(path)
