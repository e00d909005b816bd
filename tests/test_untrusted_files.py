"""Files a user hands us are data, never code: no unpickling anywhere in the package (tensors
are safetensors, the rest JSON/YAML), YAML read with the safe loader only (python tags refused,
in a config file and in a checkpoint's config.yaml alike), `--set` values taken literally."""

import ast
from pathlib import Path

import pytest

from megagoku.config import ConfigError, load_training_config
from megagoku.config.loader import parse_overrides

PACKAGE = Path(__file__).resolve().parents[1] / "megagoku"
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all",
               "full_load_all"}


def keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def dotted(node) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def unpickling(path: Path) -> list[str]:
    """Every way `path` could unpickle or construct objects from a file it reads."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLERS]
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in PICKLERS:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name == "torch.load" and keyword(node, "weights_only") is not True:
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and keyword(node, "allow_pickle") is True:
                found.append(f"line {node.lineno}: {name}(allow_pickle=True)")
            if name.startswith("yaml.") and name.split(".", 1)[1] in UNSAFE_YAML:
                found.append(f"line {node.lineno}: {name}")
            if name.endswith("read_pickle"):
                found.append(f"line {node.lineno}: {name}")
    return found


def test_nothing_in_the_package_unpickles():
    offences = {str(p.relative_to(PACKAGE.parent)): f for p in sorted(PACKAGE.rglob("*.py"))
                if (f := unpickling(p))}
    assert not offences, offences


def test_the_check_sees_each_way(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("import pickle\nfrom dill import loads\nimport yaml, torch, numpy as np\n"
                      "yaml.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=True)\n"
                      "np.load(p, allow_pickle=True)\nyaml.safe_load(f)\n")
    assert len(unpickling(source)) == 5


def test_python_tags_in_a_config_are_refused(tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "c.yaml"
    config.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=f"{config}: invalid YAML .*python/object/apply"):
        load_training_config(config)
    assert not marker.exists()
    # A --set value with a tag is a plain string, never constructed.
    assert parse_overrides([f"name=!!python/object/apply:os.system ['touch {marker}']"]) == \
        [("name", f"!!python/object/apply:os.system ['touch {marker}']")]
    assert not marker.exists()
