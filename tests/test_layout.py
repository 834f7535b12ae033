"""The dependency direction of docs/design.md, read from the imports themselves:
``acquisition`` and ``models`` import neither ``service`` nor ``training``; ``service``
does not import ``training``; nothing the service runs imports PyTorch; and no
module imports itself back at import time."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("acquisition", "models", "training", "service")
FORBIDDEN = {
    "acquisition": {"service", "training", "torch"},
    "models": {"service", "training", "torch"},
    "service": {"training", "torch"},
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the absolute name imported
    eager: bool  # at module level, outside ``if TYPE_CHECKING:``
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[Import]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            ):
                visit(child, False)
            elif isinstance(child, ast.Import):
                found.extend(Import(name, a.name, eager, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                found.append(Import(name, target, eager, child.lineno))
                # ``from pkg import module`` imports pkg.module when it is one.
                for alias in child.names:
                    if (REPO / Path(*f"{target}.{alias.name}".split("."))).with_suffix(
                        ".py"
                    ).is_file() or (REPO / Path(*f"{target}.{alias.name}".split("."))).is_dir():
                        found.append(Import(name, f"{target}.{alias.name}", eager, child.lineno))
            else:
                visit(child, eager)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def _all_imports() -> dict[str, list[Import]]:
    return {
        _module_name(path): _imports(path)
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_the_dependencies_point_one_way(package):
    wrong = [
        f"{i.module}:{i.line} imports {i.target}"
        for module, imports in _all_imports().items()
        if module.split(".")[0] == package
        for i in imports
        if i.target.split(".")[0] in FORBIDDEN[package]
    ]
    assert not wrong, "\n".join(wrong)


def _eager_graph() -> dict[str, set[str]]:
    """Module -> the project modules it runs at import time (a dotted import also
    runs every parent package's ``__init__``)."""
    modules = _all_imports()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, imports in modules.items():
        for i in imports:
            parts = i.target.split(".")
            for n in range(1, len(parts) + 1):
                target = ".".join(parts[:n])
                if target in modules and target != module:
                    graph[module].add(target)
    return graph


def test_no_import_cycle():
    graph = _eager_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            # A package's own __init__ importing its submodules is how packages work.
            if module.startswith(target + "."):
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_imports():
    """The reader finds relative, lazy and type-only imports (so the tests above can fail)."""
    imports = _all_imports()
    cropfile = {i.target: i for i in imports["acquisition.cropfile"]}
    assert cropfile["h5py"].eager is False  # under TYPE_CHECKING
    runner = {i.target: i for i in imports["service.loop.runner"]}
    assert runner["service.loop.states"].eager is True  # relative
    assert {"service.app", "uvicorn"} <= {i.target for i in imports["service.serve"] if not i.eager}
    assert any(
        i.target == "acquisition.cameras.basler" for i in imports["acquisition.cameras.spec"]
    )
