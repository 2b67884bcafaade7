"""The package's layering: no module of bnsym imports, directly or through others, a module that imports it back
(at the top of a file or inside a function: a lazy import is still a dependency). A circle means two modules are one
job split in two, or a lower layer that knows a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bnsym"


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from bnsym import x`` counts as bnsym.x when x is a module).
    Modules loaded by name with importlib (the generated kernels, which import nothing of the package above them)
    are not seen; ``_generated`` is left out."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py") if "_generated" not in p.parts}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: up from this module's package
                    parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parents + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circle():
    found = cycles(import_graph())
    assert not found, "modules that import each other (directly or through others): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_circle():
    """The check above can fail: a made-up graph with a circle of three and a tail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    graph = import_graph()
    assert "bnsym.runtime.compiled" in graph["bnsym.tools.precompile"], "an import inside a function was not seen"
    package = tmp_path / "made_up"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "__init__.py").write_text("")
    (package / "top.py").write_text("def f():\n    from .inner import deep\n")
    (package / "inner" / "deep.py").write_text("from ..top import f\nfrom . import other\n")
    (package / "inner" / "other.py").write_text("")
    made_up = import_graph(package)
    assert made_up["made_up.top"] == {"made_up.inner.deep"}
    assert made_up["made_up.inner.deep"] == {"made_up.top", "made_up.inner.other"}
    assert cycles(made_up) == [["made_up.inner.deep", "made_up.top"]]
