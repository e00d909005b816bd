"""The rooms of docs/architecture.md and the arrows between them: every `megagoku.X` import in a
room must be to the room itself or to one it may import."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megagoku"

MAY_IMPORT = {
    "config": set(),
    "ops": set(),
    "flow": {"config"},
    "parallel": {"config"},
    "data": {"config"},
    "curation": {"config", "data"},
    "models": {"config", "ops", "parallel"},
    "inference": {"config", "models", "flow", "data", "parallel"},
    # train -> launch: the heartbeat, event log and exit codes the launcher reads (plain files);
    # train -> evaluation: evaluation during training (evaluation/periodic.py).
    "train": {"config", "models", "ops", "flow", "parallel", "data", "inference", "launch",
              "evaluation"},
    # Evaluation and the RF-vs-DDPM ablation: generate (inference, models, flow), read back
    # (data's shapes and pixel analyser); never train/ (the trainer calls it, not the reverse).
    "evaluation": {"config", "models", "flow", "data", "inference"},
    "launch": {"config"},
    # megagoku/progress.py, a module: rate and ETA for every progress line; imports nothing.
    "progress": set(),
}
# Rooms that may import the progress module besides their own list.
for _room in ("curation", "train", "inference", "evaluation"):
    MAY_IMPORT[_room] = MAY_IMPORT[_room] | {"progress"}


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "megagoku":
            names = [f"megagoku.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom):  # relative: resolve against the file's package
            package = path.relative_to(PACKAGE.parent).parent.parts
            base = package[: len(package) - node.level + 1]
            names = [".".join((*base, node.module or ""))]
        for name in names:
            parts = name.split(".")
            if parts[0] == "megagoku" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


@pytest.mark.parametrize("room", sorted(r for r in MAY_IMPORT if (PACKAGE / r).is_dir()
                                        or (PACKAGE / f"{r}.py").is_file()))
def test_room_imports_only_what_it_may(room):
    allowed = MAY_IMPORT[room] | {room}
    paths = [PACKAGE / f"{room}.py"] if (PACKAGE / f"{room}.py").is_file() else \
        sorted((PACKAGE / room).rglob("*.py"))
    for path in paths:
        bad = imported_rooms(path) - allowed
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"


def test_every_room_is_listed():
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms - {"tools"} <= MAY_IMPORT.keys(), rooms - MAY_IMPORT.keys()
