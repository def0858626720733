"""Imports run one way: no cycle between jaxnets' modules or its sub-packages (a top-level
module is its own unit), and an import inside a function says why in a comment (the only
reason allowed: delaying a heavy optional dependency). The same rules as
../shared/tools/import_graph.py, checked in CI."""
import ast
import graphlib
import pathlib

from helpers import REPO

ROOT = pathlib.Path(REPO)


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted((ROOT / "jaxnets").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _targets(module: str, node, is_package: bool, known) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    found = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.append(name)
    return found


def _scan():
    known = _modules()
    edges, lazy = {m: set() for m in known}, []
    for module, path in known.items():
        lines = path.read_text().splitlines()

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(module, child, path.name == "__init__.py", known):
                        edges[module].add(target)
                        if in_function and "#" not in lines[child.lineno - 1]:
                            lazy.append(f"{module}:{child.lineno} -> {target}")
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(path.read_text()), False)
    return edges, lazy


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules_or_packages():
    edges, _ = _scan()
    graphlib.TopologicalSorter(edges).prepare()          # raises CycleError naming the cycle
    units: dict[str, set[str]] = {}
    for module, targets in edges.items():
        units.setdefault(_unit(module), set()).update(_unit(t) for t in targets if _unit(t) != _unit(module))
    graphlib.TopologicalSorter(units).prepare()


def test_every_function_level_import_of_jaxnets_says_why():
    _, lazy = _scan()
    assert lazy == []
