"""The package's map: layers, no import cycles, no private names across packages.

Low to high: errors < config < runtime < data < models, cwt < training < convert < evaluate <
benchmarks < commands < cli. A module may import its own layer and the ones below; what a lower
layer needs from a higher one moves down (CONTRIBUTING.md). Function-level imports count: a cycle
hidden inside a function is still two modules that need each other. Imports under
``if TYPE_CHECKING:`` do not (they are annotations, never run). A name another package imports is
that module's API, and is spelled without a leading underscore.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "headless_megatron"

LAYERS = [
    {"errors", "quiet", "durable"},
    {"config"},
    {"runtime"},
    {"data"},
    {"models", "cwt"},
    {"training"},
    {"convert"},
    {"evaluate"},
    {"benchmarks"},
    {"commands"},
    {"cli", "__main__"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _run_time_imports(tree: ast.AST):
    """Every import statement of ``tree`` at any depth, except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (inner for child in node.orelse for inner in _run_time_imports_of(child))
            continue
        yield from _run_time_imports_of(node)


def _run_time_imports_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _run_time_imports(node)


def _imports(path: Path, module: str):
    """(line, absolute module name, imported names) of every run-time import in ``path`` (module
    ``module``), at any depth; the names are those of ``from ... import``, else empty."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _run_time_imports(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
            continue
        if node.level:  # relative: resolved against this module's package
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module
        yield node.lineno, name, tuple(alias.name for alias in node.names)


def _imported_modules(path: Path, module: str):
    """(line, absolute module name) of every run-time import in ``path``; ``from package import
    module`` names the module."""
    for line, name, names in _imports(path, module):
        submodules = [f"{name}.{alias}" for alias in names if _is_module(f"{name}.{alias}")]
        if name == "headless_megatron" or submodules:
            yield from ((line, submodule) for submodule in (submodules or [f"{name}.{n}" for n in names]))
            if name == "headless_megatron" or len(submodules) == len(names):
                continue
        yield line, name


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] != "headless_megatron":
        return False
    base = PACKAGE.parent.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "headless_megatron" and len(parts) > 1 and parts[1] in LEVEL else None


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    unplaced = sorted({
        _module_name(path).split(".")[1] for path in _modules()
        if path != PACKAGE / "__init__.py" and _layer(_module_name(path)) is None
    })
    assert not unplaced, f"give these a place in LAYERS (tests/test_layering.py): {unplaced}"


def test_no_module_imports_from_a_higher_layer():
    violations = []
    for path in _modules():
        own = _layer(_module_name(path))
        if own is None:
            continue
        for line, imported in _imported_modules(path, _module_name(path)):
            other = _layer(imported)
            if other is not None and LEVEL[other] > LEVEL[own]:
                violations.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {imported} ({other} is a higher layer)"
                )
    assert not violations, "lower layers import higher ones:\n" + "\n".join(sorted(set(violations)))


def _import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports at run time."""
    graph = {}
    for path in _modules():
        module = _module_name(path)
        graph[module] = {
            imported for _, imported in _imported_modules(path, module)
            if _is_module(imported) and imported != module
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, "modules that import each other (directly or round a loop):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_private_names_imported_across_packages():
    violations = []
    for path in _modules():
        module = _module_name(path)
        for line, imported, names in _imports(path, module):
            if not imported or not imported.startswith("headless_megatron.") or \
                    _package_of(imported) == _package_of(module):
                continue
            private = [name for name in names if name.startswith("_") and not name.startswith("__")]
            private += [part for part in imported.split(".") if part.startswith("_") and not part.startswith("__")]
            if private:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {', '.join(private)} from {imported}")
    assert not violations, "private names used by another package (make them public API):\n" + "\n".join(violations)


def test_the_cycle_check_finds_loops_through_several_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_type_checking_imports_do_not_count(tmp_path):
    module = tmp_path / "headless_megatron" / "config" / "example.py"
    module.parent.mkdir(parents=True)
    module.write_text("import typing\nif typing.TYPE_CHECKING:\n    from headless_megatron.models import x\n"
                      "else:\n    from headless_megatron.data import y\n")
    assert [name for _, name, _ in _imports(module, "headless_megatron.config.example")] == [
        "typing", "headless_megatron.data",
    ]


def test_the_check_finds_function_level_and_relative_imports(tmp_path):
    module = tmp_path / "headless_megatron" / "data" / "example.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from headless_megatron.training import loop\n    from ..convert import mapping\n"
                      "    from headless_megatron import evaluate\n    import headless_megatron.cli\n")
    assert [(line, _layer(name)) for line, name in _imported_modules(module, "headless_megatron.data.example")] == [
        (2, "training"), (3, "convert"), (4, "evaluate"), (5, "cli"),
    ]


MAX_MODULE_LINES = 400


def test_every_module_reads_top_to_bottom_in_one_sitting():
    """A module over ~400 lines holds more than one concept: split it (docs/architecture.md)."""
    long = {str(path.relative_to(PACKAGE.parent)): lines for path in _modules()
            if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
