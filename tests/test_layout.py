"""Where things live: no module over about 400 lines, no import cycles between the project's modules,
and no module importing another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aligners", "backbones", "benchmarks", "callbacks", "datamodules", "lightning_modules")
MAX_LINES = 420  # "about 400"


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(imported project module, names taken from it)`` for every import in the file, nested ones included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base in modules:
                out.append((base, [alias.name for alias in node.names]))
    return out


def test_no_module_is_over_about_400_lines() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules: {long}"


def test_no_module_imports_private_names_of_another() -> None:
    modules = _modules()
    private = [
        f"{name} imports {taken} from {source}"
        for name, path in modules.items()
        for source, names in _imports(path, name, modules)
        for taken in names
        if taken.startswith("_") and source != name
    ]
    assert not private, private


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: {source for source, _ in _imports(path, name, modules) if source != name} for name, path in modules.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of theirs
    for name in graph:
        graph[name] = {s for s in graph[name] if not name.startswith(s + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
