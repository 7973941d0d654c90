"""The package's layers: no module imports from a layer above its own (function-level imports too).

Low to high: errors < config < runtime < data < models, cwt < training < convert < evaluate <
benchmarks < commands < cli. A module may import its own layer and the ones below; what a lower
layer needs from a higher one moves down (CONTRIBUTING.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "headless_megatron"

LAYERS = [
    {"errors", "quiet"},
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
# The one import against the layers, by design: a model family validates its own keys, and the
# config's validation asks it to (the family modules import Megatron only inside their methods).
ALLOWED = {("headless_megatron.config.validation", "headless_megatron.models.family")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, module: str):
    """(line, absolute module name) of every import in ``path`` (module ``module``), at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            if name == "headless_megatron":  # `from headless_megatron import training` names the layer
                for alias in node.names:
                    yield node.lineno, f"{name}.{alias.name}"
            else:
                yield node.lineno, name


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
            allowed = (_module_name(path), imported) in ALLOWED
            if other is not None and LEVEL[other] > LEVEL[own] and not allowed:
                violations.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {imported} ({other} is a higher layer)"
                )
    assert not violations, "lower layers import higher ones:\n" + "\n".join(sorted(set(violations)))


def test_the_check_finds_function_level_and_relative_imports(tmp_path):
    module = tmp_path / "headless_megatron" / "data" / "example.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from headless_megatron.training import loop\n    from ..convert import mapping\n"
                      "    from headless_megatron import evaluate\n    import headless_megatron.cli\n")
    assert list(_imported_modules(module, "headless_megatron.data.example")) == [
        (2, "headless_megatron.training"), (3, "headless_megatron.convert"),
        (4, "headless_megatron.evaluate"), (5, "headless_megatron.cli"),
    ]
