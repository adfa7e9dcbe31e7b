"""The package's layers point down only (docs/architecture.md, "Layers"): read the import graph of
``src/cordaseg`` with ``ast`` (module-level and function-level imports alike) and fail on an
import of a higher layer, an import between two units of one layer, an import of the top-level
package, a private name taken from another unit, or a cycle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cordaseg"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("config",),
    ("runtime",),
    ("data",),
    ("models", "world"),
    ("adaptation", "depth", "evaluation"),
    ("engine",),
    ("demo",),
    ("cli",),
)
"""Units from the bottom up: a unit may import the units of lower layers and itself, nothing else.
The top-level package (``cordaseg/__init__.py``, the public API) sits above them all."""

LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    """``cordaseg.models.corda`` -> ``models``; the top-level package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path, module: str, known: set[str]) -> list[tuple[str, tuple[str, ...], int]]:
    """(imported module, names taken from it, line) of every import of ``cordaseg`` in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names if alias.name.split(".")[0] == "cordaseg"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "cordaseg":
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:  # ``from cordaseg.data import formats`` imports a module
                    found.append((submodule, (), node.lineno))
                else:
                    found.append((base, (alias.name,), node.lineno))
    return found


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the modules it imports; and every rule broken, one line each."""
    files = modules()
    known = set(files)
    edges: dict[str, set[str]] = {name: set() for name in files}
    problems = []
    for name, path in files.items():
        where = f"{path.relative_to(PACKAGE.parent.parent)}"
        for target, names, line in imports(path, name, known):
            if target not in known:
                problems.append(f"{where}:{line}: imports {target}, which is not a module of the package")
                continue
            edges[name].add(target)
            source_unit, target_unit = unit(name), unit(target)
            if target_unit == "":
                problems.append(f"{where}:{line}: imports the top-level package cordaseg (the public API, "
                                "which imports most of the package); import the module that defines the name")
            elif source_unit == "":
                continue  # the public API may use any unit
            elif target_unit not in LEVEL or source_unit not in LEVEL:
                missing = target_unit if target_unit not in LEVEL else source_unit
                problems.append(f"{where}:{line}: unit '{missing}' is in no layer; add it to LAYERS")
            elif LEVEL[target_unit] > LEVEL[source_unit]:
                problems.append(f"{where}:{line}: {source_unit} imports {target} from the higher layer {target_unit}")
            elif LEVEL[target_unit] == LEVEL[source_unit] and target_unit != source_unit:
                problems.append(f"{where}:{line}: {source_unit} imports {target} from {target_unit}, a unit of "
                                "the same layer (units of one layer are independent)")
            private = [n for n in names if n.startswith("_")]
            if private and target_unit != source_unit:
                problems.append(f"{where}:{line}: takes the private name(s) {', '.join(private)} of {target}, "
                                f"another unit ({target_unit})")
    return edges, problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_imports_point_down_the_layers():
    _, problems = graph()
    assert not problems, "\n".join(problems)


def test_no_import_cycles_between_modules():
    edges, _ = graph()
    # A package's __init__ importing its own submodules is how packages re-export; a submodule
    # importing its package's __init__ back would close a cycle and is reported.
    found = cycles(edges)
    assert not found, "\n".join(" <-> ".join(component) for component in found)


def test_every_unit_has_a_layer():
    units = {unit(name) for name in modules()} - {""}
    assert units <= set(LEVEL), sorted(units - set(LEVEL))


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "cordaseg" / "models" / "thing.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from cordaseg.engine import trainer\n\nfrom ..data import formats\n")
    known = {"cordaseg.engine.trainer", "cordaseg.data.formats"}
    found = {(target, line) for target, _, line in imports(source, "cordaseg.models.thing", known)}
    assert found == {("cordaseg.engine.trainer", 2), ("cordaseg.data.formats", 4)}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
