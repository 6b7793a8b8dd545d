"""The package layout as rules: the engine's import graph has no cycle, each room imports only from itself and
the rooms before it in the flow, no private name crosses a module, and only the store opens Zarr.

Run: python -m pytest tests/test_architecture.py -v   (the room graph is printed with -s)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"
# The flow: each room may import from the rooms before it, never from one after it.
ROOMS = ["core", "config", "sources", "curvature", "store", "directions", "sweep", "figures", "app", "integrations"]
# `python -m` entry shims (torchrun, sbatch, docker): they only call the CLI, which is the last room.
SHIMS = {"engine.sweep.__main__", "engine.run_spectrum"}
ZARR_OPENERS = {"open", "open_group", "open_array", "create", "create_group", "create_array", "group", "array"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}


def engine_imports(path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported engine module, names taken from it) for every import in the file, nested ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "engine"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "engine":
            names = [a.name for a in node.names]
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in known]
            out += [(m, []) for m in submodules]
            plain = [n for n in names if f"{node.module}.{n}" not in known]
            if plain or not submodules:
                out.append((node.module, plain))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {target for target, _ in engine_imports(p, known) if target != m} for m, p in mods.items()}


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else None


def test_every_module_lives_in_a_room() -> None:
    loose = [m for m in modules() if m not in ("engine", *SHIMS) and room(m) not in ROOMS]
    assert not loose, f"modules outside the rooms {ROOMS}: {loose}"


def test_import_graph_has_no_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(n):], n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_rooms_import_only_from_earlier_rooms() -> None:
    order = {r: k for k, r in enumerate(ROOMS)}
    upward = []
    for m, targets in graph().items():
        if m in SHIMS or room(m) is None:
            continue
        for t in targets:
            if room(t) is not None and order[room(t)] > order[room(m)]:
                upward.append(f"{m} -> {t}")
    assert not upward, "imports against the flow " + " > ".join(ROOMS) + ": " + ", ".join(sorted(upward))


def test_no_private_name_is_imported_across_modules() -> None:
    mods = modules()
    known = set(mods)
    private = [f"{m}: {target}.{n}" for m, p in mods.items() for target, names in engine_imports(p, known)
               for n in names if n.startswith("_") and n != "__version__"]
    assert not private, f"private names imported across modules: {private}"


def test_only_the_store_opens_zarr() -> None:
    outside = []
    for m, p in modules().items():
        if room(m) == "store":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "zarr"
                    and node.attr in ZARR_OPENERS):
                outside.append(f"{m}: zarr.{node.attr}")
    assert not outside, f"Zarr opened outside engine/store: {outside}"


def test_the_room_graph_is_printable(capsys: pytest.CaptureFixture[str]) -> None:
    """The rooms and which earlier rooms each one uses (shown with pytest -s)."""
    uses: dict[str, set[str]] = {r: set() for r in ROOMS}
    for m, targets in graph().items():
        if room(m) in uses and m not in SHIMS:
            uses[room(m)] |= {room(t) for t in targets if room(t) not in (None, room(m))}
    lines = [f"{r:>10} <- {', '.join(sorted(uses[r], key=ROOMS.index)) or '-'}" for r in ROOMS]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert uses["core"] <= set()


def test_every_room_ships_in_the_wheel() -> None:
    """pyproject.toml lists the packages (conf/ is mapped in as engine.conf, which find cannot do): a new room
    missing there would be left out of the wheel."""
    import tomllib

    listed = set(tomllib.loads((ENGINE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {module_name(p) for p in ENGINE.rglob("__init__.py")}
    assert packages <= listed, f"packages missing from pyproject.toml [tool.setuptools] packages: {packages - listed}"
