"""The rooms of docs/architecture.md and the arrows between them: every `megagoku.X` import in a
room must be to the room itself or to one it may import; and only `parallel/` touches
`torch.distributed` (process groups, collectives), the launcher's use of torch's elastic agent
excepted."""

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
    # What a step does to the weights after its loss (update, LR schedule, EMA): shared by every
    # trainer, the ablation's included.
    "optim": {"config", "parallel"},
    # train -> launch: the heartbeat, event log and exit codes the launcher reads (plain files);
    # train -> evaluation: evaluation during training (evaluation/periodic.py).
    "train": {"config", "models", "ops", "flow", "parallel", "data", "inference", "launch",
              "evaluation", "optim"},
    # Evaluation and the RF-vs-DDPM ablation: generate (inference, models, flow), read back
    # (data's shapes and pixel analyser), train the ablation's models with the project's update
    # and EMA (optim); never train/ (the trainer calls it, not the reverse).
    "evaluation": {"config", "models", "flow", "data", "inference", "optim"},
    "launch": {"config"},
    # megagoku/progress.py, a module: rate and ETA for every progress line; imports nothing.
    "progress": set(),
    # megagoku/storage.py, a module: tensor files written (umask, checksums) and checked; imports
    # nothing of ours.
    "storage": set(),
}
# Rooms that may import the progress module besides their own list.
for _room in ("data", "curation", "train", "inference", "evaluation"):
    MAY_IMPORT[_room] = MAY_IMPORT[_room] | {"progress"}
# Rooms whose long loops report liveness to `megagoku launch` through launch/heartbeat.py, a
# module that imports nothing of megagoku; they may import that module of launch/ and no other
# (test_only_the_heartbeat_module_of_launch_is_imported_outside_train_and_tools).
HEARTBEAT_ONLY = ("data", "inference", "evaluation")
for _room in HEARTBEAT_ONLY:
    MAY_IMPORT[_room] = MAY_IMPORT[_room] | {"launch"}
# Rooms that write or read tensor files: through the storage module.
for _room in ("data", "curation", "train", "inference", "evaluation", "models"):
    MAY_IMPORT[_room] = MAY_IMPORT[_room] | {"storage"}


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


# Files outside parallel/ that may import torch.distributed, and what: the launcher supervises
# processes with torch's elastic agent (rendezvous, worker groups, restarts); it never starts a
# process group or runs a collective itself.
DISTRIBUTED_EXCEPTIONS = {
    "megagoku/launch/agent.py": "torch.distributed.elastic",
    "megagoku/tools/launch.py": "torch.distributed.elastic",
    # The launcher's rendezvous store, a TCPStore on a socket it bound to one address (and the
    # elastic rendezvous handler built on it): a store, no process group, no collective.
    "megagoku/launch/stores.py": "torch.distributed",
}


def distributed_uses(path: Path) -> list[tuple[int, str]]:
    """(line, what) of every import of torch.distributed (any submodule) and every
    `torch.distributed...` attribute in a file."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "torch" else \
                [f"torch.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and node.attr == "distributed" and \
                isinstance(node.value, ast.Name) and node.value.id == "torch":
            names = ["torch.distributed"]
        uses += [(node.lineno, name) for name in names
                 if name == "torch.distributed" or name.startswith("torch.distributed.")]
    return uses


def test_only_parallel_touches_torch_distributed():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE.parent))
        if name.startswith("megagoku/parallel/"):
            continue
        allowed = DISTRIBUTED_EXCEPTIONS.get(name)
        offences += [f"{name}:{line}: {what}" for line, what in distributed_uses(path)
                     if allowed is None or not (what == allowed or what.startswith(allowed + "."))]
    assert not offences, "torch.distributed outside parallel/ (ask parallel.collectives):\n" + \
        "\n".join(offences)


def test_the_distributed_check_sees_every_spelling(tmp_path):
    source = tmp_path / "some.py"
    source.write_text("import torch.distributed as dist\nfrom torch import distributed\n"
                      "from torch.distributed import barrier\nimport torch\n"
                      "torch.distributed.get_rank()\nx.latent_dist.mode()\n")
    assert [line for line, _ in distributed_uses(source)] == [1, 2, 3, 5]
    for name, allowed in DISTRIBUTED_EXCEPTIONS.items():  # the exceptions use only that
        assert {what for _, what in distributed_uses(PACKAGE.parent / name)} and all(
            what.startswith(allowed) for _, what in distributed_uses(PACKAGE.parent / name))


def test_only_the_heartbeat_module_of_launch_is_imported_outside_train_and_tools():
    for room in HEARTBEAT_ONLY:
        for path in sorted((PACKAGE / room).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "megagoku.launch":
                    assert [a.name for a in node.names] == ["heartbeat"], path
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                        "megagoku.launch."):
                    assert node.module == "megagoku.launch.heartbeat", path
    assert imported_rooms(PACKAGE / "launch" / "heartbeat.py") == set()
