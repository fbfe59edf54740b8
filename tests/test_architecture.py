"""The tree is the architecture: layers import downwards only, and no module imports itself back.

Reads every project module's imports (top-level and inside functions) with `ast`; nothing is
executed, so the check holds for optional backends (PostgreSQL) too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("api", "usecases", "vision", "video", "gallery", "imaging", "telemetry", "model_tools", "frtriton_client")
MAX_ROOT_MODULES = 9


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the service (root modules and packages)."""
    modules = {path.stem: path for path in ROOT.glob("*.py")}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path) -> set[str]:
    """Every module name `path` imports, absolute, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize(
    ("graph", "has_cycle"),
    [
        ({"a": {"b"}, "b": set()}, False),
        ({"a": {"b"}, "b": {"a"}}, True),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_the_cycle_finder_finds_cycles_and_only_cycles(graph: dict[str, set[str]], has_cycle: bool) -> None:
    assert (find_cycle(graph) is not None) == has_cycle


def test_no_module_imports_itself_back_through_others() -> None:
    cycle = find_cycle(project_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_root_holds_the_design_card_modules_only() -> None:
    roots = sorted(path.name for path in ROOT.glob("*.py"))
    assert len(roots) <= MAX_ROOT_MODULES, roots


def in_layer(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# (importer layer, layers it must not import): data flows routes -> use cases -> pipeline -> Triton.
FORBIDDEN = [
    (("vision",), ("pipeline", "usecases", "api", "app", "triton_service", "gallery")),
    (("video",), ("pipeline", "usecases", "api", "app", "triton_service", "gallery", "fastapi", "starlette")),
    (("pipeline",), ("usecases", "api", "app", "gallery")),
    (("usecases",), ("api", "app", "fastapi", "starlette")),
    # the gallery stores and searches vectors: it never computes one (re-embedding is usecases.reembed)
    (("gallery",), ("api", "app", "usecases", "pipeline", "triton_service", "imaging", "vision", "fastapi")),
    (("api",), ("pipeline", "triton_service", "gallery.sqlite", "gallery.postgres", "gallery.factory")),
    (("imaging", "telemetry", "model_tools"), ("api", "app", "usecases")),
    (("imaging",), ("gallery", "pipeline", "triton_service")),  # pixels in, pixels or bytes out
]


@pytest.mark.parametrize(("importers", "forbidden"), FORBIDDEN)
def test_layers_import_downwards_only(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    modules = project_modules()
    wrong = {
        name: sorted(m for m in imports_of(path) if in_layer(m, forbidden))
        for name, path in modules.items()
        if in_layer(name, importers)
    }
    assert not {name: found for name, found in wrong.items() if found}


def test_only_triton_service_imports_tritonclient() -> None:
    modules = project_modules()
    importers = sorted(
        name for name, path in modules.items() if any(m.startswith("tritonclient") for m in imports_of(path))
    )
    assert importers == ["triton_service"]


def test_the_python_client_imports_nothing_of_the_project_but_itself() -> None:
    """frtriton_client/ is meant to be copied into other code bases as a folder."""
    modules = project_modules()
    own = {name: path for name, path in modules.items() if in_layer(name, ("frtriton_client",))}
    assert len(own) > 1
    outside = {
        name: sorted(m for m in imports_of(path) if m in modules and not in_layer(m, ("frtriton_client",)))
        for name, path in own.items()
    }
    assert not {name: found for name, found in outside.items() if found}
