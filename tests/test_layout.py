"""The package's layout (docs/architecture.md): no import circle, data modules import only from
below them, no module named for a category."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlip"

DATA_ORDER = {
    "records": 1, "mptrj": 1, "lmdb": 1, "graph": 1, "readers": 2, "__init__": 2,
    "stats": 3, "convert": 4, "datamodule": 4,
}  # fmt: skip
"""mlip.data's modules by level: each may import only from lower levels."""


def imports() -> dict[str, set[str]]:
    """``{module: the mlip modules it imports}`` (``from mlip import keys`` is ``mlip.keys``)."""
    names = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in files()}
    names = {n.removesuffix(".__init__") for n in names}
    graph: dict[str, set[str]] = {}
    for path in files():
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlip"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in names else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("mlip")}
        graph[module.removesuffix(".__init__")] = found - {module.removesuffix(".__init__")}
    return graph


def files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_import_circle():
    graph = imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dependency in graph.get(module, ()):
            if dependency != "mlip":  # the package's lazy __init__ imports nothing
                visit(dependency, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_data_modules_import_only_from_below():
    for module, dependencies in imports().items():
        if not module.startswith("mlip.data"):
            continue
        level = DATA_ORDER[module.removeprefix("mlip.data").lstrip(".") or "__init__"]
        for dependency in dependencies:
            assert dependency in ("mlip", "mlip.errors", "mlip.keys") or dependency.startswith(
                "mlip.data"
            ), f"{module} imports {dependency}, a higher layer"
            if dependency.startswith("mlip.data."):
                below = DATA_ORDER[dependency.removeprefix("mlip.data.")]
                assert below < level, f"{module} (level {level}) imports {dependency} ({below})"


def test_no_module_named_for_a_category():
    for path in files():
        assert path.stem not in ("tools", "utils", "helpers", "misc", "common"), path
