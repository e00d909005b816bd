"""Curation configs: the paper's tiers as presets built on each other with `base:`, overrides,
and validation that stops a bad file (or a model path that is not there) before any work."""

import pytest

from megagoku.config import ConfigError
from megagoku.config.curate import load_curate_config
from megagoku.config.loader import CONFIGS_DIR

TIERS = CONFIGS_DIR / "curate"

MODELS = ["split.model_dir={d}", "filter.clip_dir={d}", "filter.head_path={f}"]


def with_models(tmp_path):
    (tmp_path / "head.pth").write_bytes(b"")
    return [m.format(d=tmp_path, f=tmp_path / "head.pth") for m in MODELS]


@pytest.mark.parametrize("tier, side, similarity, aesthetic, text, motion", [
    ("480p", 480, 0.85, 4.3, 0.02, (0.3, 20.0)),
    ("720p", 720, 0.90, 4.5, 0.01, (0.5, 15.0)),
    ("1080p", 1080, 0.90, 4.5, 0.01, (0.5, 8.0)),
])
def test_tiers_are_the_papers_table_4(tmp_path, tier, side, similarity, aesthetic, text, motion):
    cfg = load_curate_config(TIERS / f"{tier}.yaml", with_models(tmp_path))
    assert cfg.probe.min_side == side and cfg.split.similarity == similarity
    assert cfg.filter.min_aesthetic == aesthetic and cfg.filter.max_text_coverage == text
    assert (cfg.filter.min_motion, cfg.filter.max_motion) == motion
    assert (cfg.probe.min_duration, cfg.probe.min_bitrate_kbps, cfg.probe.min_fps) == (4, 500, 24)
    assert cfg.split.features == "dinov2" and cfg.filter.aesthetic == "laion"


def test_a_tier_without_its_models_stops_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="480p.yaml: split.model_dir: features: dinov2 needs"):
        load_curate_config(TIERS / "480p.yaml")
    overrides = with_models(tmp_path)
    overrides[1] = f"filter.clip_dir={tmp_path / 'nope'}"
    with pytest.raises(ConfigError, match=r"filter.clip_dir: no such directory: .*nope"):
        load_curate_config(TIERS / "720p.yaml", overrides)


def test_a_file_builds_on_a_base_and_overrides_win(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: tiny.yaml\nfilter:\n  min_aesthetic: 5.5\n")
    cfg = load_curate_config(tmp_path / "mine.yaml", ["dedup.max_distance=3"])
    assert cfg.filter.min_aesthetic == 5.5 and cfg.filter.max_motion == 10.0  # from tiny.yaml
    assert cfg.dedup.max_distance == 3 and cfg.balance.categories["circle"] == "a circle"


@pytest.mark.parametrize("text, message", [
    ("base: mine.yaml\n", "base: the chain of bases loops"),
    ("base: nowhere.yaml\n", "base: no such file 'nowhere.yaml'"),
    ("filter:\n  min_aesthetc: 4\n", "filter.min_aesthetc: unknown key"),
    ("split:\n  similarity: 1.5\n", "split.similarity: must be in (0, 1]"),
    ("balance:\n  enabled: true\n", "balance.categories: balancing needs categories"),
    ("balance:\n  target: {a: -1}\n", "balance.target: fractions must be >= 0"),
    ("filter:\n  aesthetic: none\n", "filter.min_aesthetic: aesthetic: none gives no score"),
    ("caption:\n  sources: [existing, llm]\n", "caption.sources: expected a list of"),
])
def test_bad_files_stop_with_the_file_and_field(tmp_path, text, message):
    (tmp_path / "mine.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_curate_config(tmp_path / "mine.yaml")
    assert message in str(e.value) and str(tmp_path / "mine.yaml") in str(e.value)
