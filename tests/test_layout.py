"""The rooms and their one-way arrows (docs/ARCHITECTURE.md), checked on the source text.

Every import counts, also one under `if TYPE_CHECKING:` or inside a function:
a type-only cycle is still a cycle for the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("migrate", "vmmodel")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (a `from pkg import mod` names the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module, not (only) the package: name the
            # package itself only for names that are not modules of it.
            subs = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t for t in subs if t in known]
            if len(targets) < len(subs):
                targets.append(base)
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _inside(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_the_graph_sees_the_imports_it_checks():
    graph = _graph()
    assert "migrate.source.engine" in graph["migrate.cli"] or any(
        _inside(m, "migrate.source") for m in graph["migrate.cli"])
    assert "vmmodel" in graph["migrate.source.engine"]


def test_source_and_destination_never_import_each_other():
    crossings = [
        (a, b) for a, deps in _graph().items() for b in deps
        if (_inside(a, "migrate.source") and _inside(b, "migrate.dest"))
        or (_inside(a, "migrate.dest") and _inside(b, "migrate.source"))
    ]
    assert crossings == []


def test_vmmodel_never_imports_migrate():
    crossings = [(a, b) for a, deps in _graph().items() if _inside(a, "vmmodel")
                 for b in deps if _inside(b, "migrate")]
    assert crossings == []


def test_vmmodel_is_pure():
    """No asyncio, sockets or files in the model: it is synchronous and deterministic."""
    # `time` stays allowed: a harvest measures the emulator's own wall time beside its model time.
    banned = {"asyncio", "socket", "aiohttp", "pathlib", "os", "io", "tomllib"}
    offenders = []
    for name, path in _modules().items():
        if not _inside(name, "vmmodel"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            offenders += [(name, r) for r in roots & banned]
    assert offenders == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None


def test_a_package_import_from_inside_the_package_is_a_cycle():
    """`from vmmodel import Vm` in a harvest module (even type-only) would close the loop
    vmmodel -> vm -> harvest -> kernel -> vmmodel: the graph keeps package edges."""
    graph = _graph()
    assert "vmmodel.vm" in graph["vmmodel"] and "vmmodel.harvest" in graph["vmmodel.vm"]
    graph["vmmodel.harvest.kernel"].add("vmmodel")
    assert _cycle(graph) is not None


def test_from_package_import_module_names_the_module(tmp_path):
    known = {"pkg", "pkg.a", "pkg.b"}
    path = tmp_path / "b.py"
    path.write_text("from pkg import a\nfrom pkg import CONSTANT\n")
    assert _imports("pkg.b", path, known) == {"pkg.a", "pkg"}
    path.write_text("from pkg import a\n")
    assert _imports("pkg.b", path, known) == {"pkg.a"}


# The validate room's arrows (docs/ARCHITECTURE.md): it runs precopy like a recorded run, so it
# reaches the config, the launcher and the engine, and reads reports; Ctrl-C cancels it as it
# cancels `precopy run` (migrate.interrupt); only the CLI reaches it.
VALIDATE_ARROWS = ("migrate.config", "migrate.interrupt", "migrate.launch", "migrate.report",
                   "migrate.source", "migrate.units", "vmmodel")


def test_validate_reaches_only_its_arrows():
    graph = _graph()
    stray = [(a, b) for a, deps in graph.items() if _inside(a, "migrate.validate")
             for b in deps if not _inside(b, "migrate.validate")
             and not any(_inside(b, room) for room in VALIDATE_ARROWS)]
    assert stray == []
    assert "migrate.source.engine" in graph["migrate.validate.compare"]  # the graph sees them


def test_only_the_cli_reaches_validate():
    graph = _graph()
    callers = {a for a, deps in graph.items() if not _inside(a, "migrate.validate")
               and any(_inside(b, "migrate.validate") for b in deps)}
    assert callers == {"migrate.cli"}
