"""The project's modules import each other without cycles (issue #17).

Every module under ecmt/, exporters/ and hw_sim/ is parsed with ast (nothing is
imported), every import statement in it (also those inside functions, which a
lazy import would hide from a run-time check) is resolved to the project module
it loads, and the resulting graph must have no cycle.

How an import is resolved:
* ``import a.b`` and ``from a.b import name`` point at ``a.b``; ``from a import b``
  points at the module ``a.b`` when there is one (a submodule import), else at
  ``a`` (a name that ``a`` defines or re-exports).  So ``from .. import ir`` in
  ecmt/convert/lower.py points at ecmt.ir, the module actually imported, and
  ``from ..ir import SpikingGraph`` points at ecmt.ir's __init__, which is what
  runs it: a module that imports its own package's re-exports while that
  package's __init__ imports it is a real cycle (it works only by import order).
* The implicit import of parent packages (loading ``a.b.c`` first runs ``a`` and
  ``a.b``) is no edge: Python puts a package in sys.modules before running its
  __init__, so a package's __init__ importing its submodules, which live inside
  the package, is the normal layout and no cycle.
* Imports of modules outside the project (torch, nir, lava) are no edges.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ecmt", "exporters", "hw_sim")


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _base_package(module: str, path: Path, level: int) -> str:
    """The package a relative import of `level` dots in `module` starts from."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return package


def import_edges(modules: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Module -> [(imported project module, line)], every import statement included."""
    edges: dict[str, list[tuple[str, int]]] = {m: [] for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _base_package(module, path, node.level)
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            for target in targets:
                if target in modules and target != module:
                    edges[module].append((target, node.lineno))
    return edges


def find_cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module, each as
    a chain [a, b, ..., a] starting from the component's first module by name."""
    graph = {m: sorted({t for t, _ in out}) for m, out in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:            # Tarjan; the graphs here are ~100 modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        if len(component) < 2:
            continue
        start = min(component)
        # shortest way back to `start` inside the component (breadth first)
        parent: dict[str, str] = {}
        frontier, found = [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in graph[v]:
                    if w == start:
                        found = v
                        break
                    if w in component and w not in parent:
                        parent[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        chain = [found]
        while chain[-1] != start:
            chain.append(parent[chain[-1]])
        cycles.append([start, *reversed(chain[:-1]), start])
    return sorted(cycles)


def describe(cycle: list[str], edges) -> str:
    """a -> b (a.py:12) -> ... : the chain with the line of each import."""
    lines = {(m, t): line for m, out in edges.items() for t, line in out}
    return " -> ".join([cycle[0]] + [f"{b} (line {lines[(a, b)]} of {a})" for a, b in zip(cycle, cycle[1:])])


def test_the_project_has_no_import_cycle():
    modules = module_files(ROOT)
    edges = import_edges(modules)
    # the walk sees the project: the lowering and its rules, the graph file format
    assert ("ecmt.convert.ops", "ecmt.convert.lowering") in {(m, t) for m, out in edges.items() for t, _ in out}
    assert "ecmt.convert.ops" in {t for t, _ in edges["ecmt.convert.lower"]}
    assert "ecmt.ir.graph" in {t for t, _ in edges["ecmt.ir.serialize"]}
    assert "ecmt.ir.graph" in {t for t, _ in edges["ecmt.ir.summary"]}
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, edges) for c in cycles)


def test_no_module_imports_the_file_format_or_summary_back():
    # the two cycles of issue #17: graph.py <-> serialize.py / summary.py, lower.py <-> ops.py
    edges = import_edges(module_files(ROOT))
    assert not {"ecmt.ir.serialize", "ecmt.ir.summary"} & {t for t, _ in edges["ecmt.ir.graph"]}
    assert not {"ecmt.convert.lower"} & {t for t, _ in edges["ecmt.convert.ops"]}


# The layers, bottom up: a module imports only from its own layer or those below.  exporters
# and hw_sim share a layer but stay apart (each reads the IR and the runtime, not the other).
LAYERS = (
    ("base", ("ecmt.errors", "ecmt.atomic", "ecmt.tensorfile", "ecmt.distributed")),
    ("ir", ("ecmt.ir",)),
    ("runtime", ("ecmt.runtime", "ecmt.memory")),
    ("convert", ("ecmt.convert", "ecmt")),
    ("backends", ("exporters", "hw_sim")),
    ("application", ("ecmt.cli", "ecmt.__main__", "ecmt.data", "ecmt.evaluate", "ecmt.zoo", "ecmt.pipeline",
                     "ecmt.neurobench")),
)
APART = {("exporters", "hw_sim"), ("hw_sim", "exporters")}


def layer_of(module: str) -> tuple[int, str]:
    """(layer number, the prefix that placed it): the longest prefix of LAYERS that matches;
    "ecmt" places the package's own __init__ only."""
    best = None
    for number, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or (p != "ecmt" and module.startswith(p + ".")):
                if best is None or len(p) > len(best[1]):
                    best = (number, p)
    if best is None:
        raise AssertionError(f"module {module} is in no layer: add it to LAYERS in tests/test_import_graph.py")
    return best


def layering_violations(edges) -> list[str]:
    out = set()
    top = lambda m: m.split(".")[0]
    for module, targets in edges.items():
        mine = layer_of(module)[0]
        for target, line in targets:
            theirs = layer_of(target)[0]
            if theirs > mine:
                out.add(f"{module} (layer {LAYERS[mine][0]}) imports {target} (layer {LAYERS[theirs][0]}) "
                        f"at line {line}")
            elif (top(module), top(target)) in APART:
                out.add(f"{module} imports {target} at line {line}: {top(module)} and {top(target)} stay apart")
    return sorted(out)


def test_imports_only_go_down_the_layers():
    violations = layering_violations(import_edges(module_files(ROOT)))
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_an_upward_import_is_found(tmp_path):
    # the checker on a copy of two real modules, one given an upward import
    _write(tmp_path, {
        "ecmt/__init__.py": "", "ecmt/ir/__init__.py": "", "ecmt/convert/__init__.py": "", "hw_sim/__init__.py": "",
        "ecmt/ir/graph.py": "import torch\n",
        "ecmt/convert/search.py": "from ..ir import graph\n\ndef f():\n    import hw_sim\n",
    })
    edges = import_edges(module_files(tmp_path, ("ecmt", "hw_sim")))
    assert layering_violations(edges) == [
        "ecmt.convert.search (layer convert) imports hw_sim (layer backends) at line 4"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_lazy_cycle_is_found_and_named(tmp_path):
    # the checker on a package of its own: a cycle through an import inside a
    # function and a relative `from .. import sub`, the chain in order
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .graph import Graph\n",
        "pkg/sub/graph.py": "class Graph:\n    def save(self):\n        from .files import save\n",
        "pkg/sub/files.py": "from .. import tools\n",
        "pkg/tools.py": "import os\nfrom pkg.sub.graph import Graph\n",
        "pkg/ok.py": "from .sub import Graph\nfrom . import tools\n",
    })
    edges = import_edges(module_files(tmp_path, ("pkg",)))
    assert sorted(t for t, _ in edges["pkg.ok"]) == ["pkg.sub", "pkg.tools"]
    assert edges["pkg.sub.files"] == [("pkg.tools", 1)]
    cycles = find_cycles(edges)
    assert cycles == [["pkg.sub.files", "pkg.tools", "pkg.sub.graph", "pkg.sub.files"]]
    assert describe(cycles[0], edges) == ("pkg.sub.files -> pkg.tools (line 1 of pkg.sub.files) -> "
                                          "pkg.sub.graph (line 2 of pkg.tools) -> pkg.sub.files "
                                          "(line 3 of pkg.sub.graph)")


def test_a_package_reexport_cycle_is_found(tmp_path):
    # a submodule that takes a name from its own package's __init__ while the
    # __init__ imports it: a cycle that works only by import order
    _write(tmp_path, {
        "pkg/__init__.py": "from .a import A\nfrom .b import B\n",
        "pkg/a.py": "A = 1\n",
        "pkg/b.py": "from . import A\nB = A\n",
    })
    edges = import_edges(module_files(tmp_path, ("pkg",)))
    assert find_cycles(edges) == [["pkg", "pkg.b", "pkg"]]


def test_the_parent_package_is_no_edge(tmp_path):
    # a package __init__ importing its submodules, which sit inside it, is no cycle
    _write(tmp_path, {
        "pkg/__init__.py": "from .x import f\nfrom .y import g\n",
        "pkg/x.py": "def f():\n    from pkg.y import g\n    return g\n",
        "pkg/y.py": "import pkg.x\ndef g():\n    pass\n",
    })
    edges = import_edges(module_files(tmp_path, ("pkg",)))
    cycles = find_cycles(edges)
    assert cycles == [["pkg.x", "pkg.y", "pkg.x"]]       # x <-> y is one; the package edges are not


@pytest.mark.parametrize("name", ["save_graph", "load_graph", "summarize"])
def test_the_file_format_is_plain_functions(name):
    import ecmt
    from ecmt import ir
    assert getattr(ecmt, name) is getattr(ir, name) and name in ecmt.__all__
    assert not hasattr(ecmt.SpikingGraph, {"save_graph": "save", "load_graph": "load",
                                           "summarize": "summary"}[name])


def test_conversion_rules_register_beside_their_handlers():
    import operator

    import torch.nn as nn

    from ecmt.convert import ops
    # handler_for reads what the decorators registered: a module class, a function, a method name
    assert ops.RULES["call_module"][nn.Linear] is ops.linear_module
    assert ops.RULES["call_function"][operator.add] is ops.RULES["call_method"]["add"] is ops.add
    assert ops.RULES["call_module"][nn.SiLU] is ops.silu and ops.RULES["call_method"]["sigmoid"] is ops.sigmoid
    assert all(h.__module__ == ops.__name__ for table in ops.RULES.values() for h in table.values())
    before = {op: dict(table) for op, table in ops.RULES.items()}

    def other(low, node, gm, args, kwargs, r1, r2):
        raise AssertionError("never called")
    with pytest.raises(ValueError, match=r"conversion rule other: <built-in function add> already converts with add"):
        ops.rule(operator.add)(other)
    with pytest.raises(TypeError, match="conversion rule other: target int is a class but not an nn.Module"):
        ops.rule(int)(other)
    with pytest.raises(TypeError, match="conversion rule other: target 3 is not a module class"):
        ops.rule(3)(other)
    assert ops.rule(operator.add)(ops.add) is ops.add      # the same rule again changes nothing
    assert ops.RULES == before
