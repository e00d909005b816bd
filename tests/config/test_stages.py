"""Stage plans: the shipped recipes load and validate; a bad plan stops with one line naming the
file, the stage and the field."""

import pytest

from megagoku.config import ConfigError
from megagoku.config.stages import load_stage_plan


@pytest.mark.parametrize("plan, stages, depth", [("tiny", 5, 4), ("goku_2b", 6, 28),
                                                 ("goku_8b", 6, 40)])
def test_shipped_plans_load_with_goku_stages(plan, stages, depth):
    p = load_stage_plan(f"configs/stages/{plan}.yaml")
    assert len(p.stages) == stages and p.stages[0].init_from is None
    assert all(s.config.model.depth == depth for s in p.stages)
    first, *rest = p.stages
    assert first.config.data.image_fraction == 1.0  # stage 1 is text-to-image
    joint = [s for s in rest if s.name.startswith("joint")]
    sizes = [s.config.data.height * s.config.data.width for s in joint]
    assert len(joint) >= 2 and sizes == sorted(sizes)  # cascaded resolutions
    assert all(0 < s.config.data.image_fraction < 1 for s in joint)
    finetunes = [s for s in rest if s.name.endswith("_ft")]
    assert {s.config.data.image_fraction for s in finetunes} == {0.0, 1.0}
    assert {s.init_from for s in finetunes} == {joint[-1].name}  # both from the last joint


def test_command_line_overrides_reach_every_stage():
    p = load_stage_plan("configs/stages/goku_2b.yaml", ["text.encoder=/models/t5", "train.lr=3e-5"])
    assert {s.config.text.encoder for s in p.stages} == {"/models/t5"}
    assert {s.config.train.lr for s in p.stages} == {3e-5}


def write(tmp_path, stages: str, extra: str = "") -> str:
    path = tmp_path / "plan.yaml"
    base = (tmp_path / "base.yaml")
    base.write_text("model: models/tiny.yaml\ntrain: {steps: 10}\n")
    path.write_text(f"base: base.yaml\n{extra}stages:\n{stages}")
    return str(path)


@pytest.mark.parametrize("stages, message", [
    ("  - name: a\n  - name: b\n    set: {model: {depth: 2}}\n",
     r"stages\[1\] \(b\)\.set: model\.depth differs from stage 'a'"),
    ("  - name: a\n  - name: b\n    init_from: c\n", r"stages\[1\] \(b\)\.init_from: 'c' is not an earlier"),
    ("  - name: a\n  - name: a\n", r"stages\[1\]\.name: 'a' is used by an earlier stage"),
    ("  - name: a\n    set: {train.lr: -1}\n", r"stages\[0\] \(a\) \(base .*\): train\.lr"),
    ("  - name: a\n    set: {checkpoint.init_from: x}\n", r"set\.checkpoint\.init_from: the stage plan"),
    ("  - name: a\n    init_optimizer: true\n", r"init_optimizer: the first stage"),
    ("  - name: a\n    steps: 3\n", r"stages\[0\]\.steps: unknown key"),
    ("  - name: 'a b'\n", r"stages\[0\]\.name: expected a name"),
    ("  - name: a\n  - name: b\n    init_optimizer: true\n    set: {model: {image_condition: true}}\n",
     r"\(b\)\.init_optimizer: this stage adds image conditioning"),
    ("  - name: a\n    set: {model: {image_condition: true}}\n  - name: b\n"
     "    set: {model: {image_condition: false}}\n",
     r"\(b\)\.set: model\.image_condition: stage 'a' is an image-to-video model"),
])
def test_bad_plans_are_refused_naming_the_stage_and_field(tmp_path, stages, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_stage_plan(write(tmp_path, stages))
    assert str(e.value).startswith(str(tmp_path / "plan.yaml")) and "\n" not in str(e.value)


def test_a_plan_without_stages_or_base_is_refused(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("base: nowhere.yaml\nstages: []\n")
    with pytest.raises(ConfigError, match="base: no such file"):
        load_stage_plan(path)
    (tmp_path / "b.yaml").write_text("{}\n")
    path.write_text("base: b.yaml\nstages: []\n")
    with pytest.raises(ConfigError, match="stages: expected a non-empty list"):
        load_stage_plan(path)


def test_the_i2v_plan_adds_image_conditioning_to_its_t2v_stage():
    p = load_stage_plan("configs/stages/i2v_tiny.yaml")
    t2v, i2v = p.stages
    assert not t2v.config.model.image_condition and i2v.config.model.image_condition
    assert i2v.init_from == "t2v" and not i2v.init_optimizer
    assert i2v.config.data.image_fraction == 0.0 and i2v.config.train.image_dropout == 0.1
