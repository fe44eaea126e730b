"""Import hygiene of the ``ctrobust`` package: no import cycles (deferred imports included), and importing
ctrobust does not edit ``sys.modules`` outside its own modules.

The cycle check is static: every module of the package is parsed with ``ast`` and every import of a
``ctrobust`` module is collected -- at module level and inside functions, methods, classes and
``try``/``if`` blocks (a deferred import only hides a cycle until the function runs). Imports under
``if TYPE_CHECKING:`` are left out: they never execute, they exist to break annotation-only cycles.

Edges: ``import ctrobust.a.b`` and ``from ctrobust.a import b`` (``b`` a submodule) point to the module
``ctrobust.a.b``; ``from ctrobust.a import name`` (``name`` not a submodule) points to the package
``ctrobust.a`` (its ``__init__``). The implicit import of parent packages is not an edge: a submodule
that imports a sibling directly does not depend on what its package's ``__init__`` re-exports, so a
re-exporting package is a cycle only when one of its submodules imports the package itself back.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import ctrobust

PKG_DIR = Path(ctrobust.__file__).resolve().parent


# ---------------------------------------------------------------------------------------------------
# the import graph
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    target: str
    file: str
    line: int
    where: str  # "module level" or "in <function>"

    def describe(self) -> str:
        return f"{self.file}:{self.line}, {self.where}"


def module_files(pkg_dir: Path, pkg_name: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (packages as their ``__init__``)."""
    out = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(pkg_dir).with_suffix("")
        parts = [pkg_name, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(not p.isidentifier() for p in parts):
            continue  # not importable (e.g. a script with a dash in its name)
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Yield ``(node, enclosing function name or None)`` for every Import/ImportFrom that can execute."""
    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:  # the ``else`` branch of ``if TYPE_CHECKING`` does run
                    yield from visit_one(sub, func)
                continue
            yield from visit_one(child, func)

    def visit_one(child, func):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, func
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            name = getattr(child, "name", "<lambda>")
            yield from visit(child, name if func is None else f"{func}.{name}")
        else:
            yield from visit(child, func)

    yield from visit(tree, None)


def import_edges(name: str, path: Path, modules: dict[str, Path], pkg_name: str, root: Path) -> list[Edge]:
    """The package-internal imports of module ``name`` (file ``path``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    this_pkg = name if is_pkg else name.rpartition(".")[0]
    edges = []

    def add(target, node, func):
        if target == pkg_name or target.startswith(pkg_name + "."):
            # a dotted name that is not a module of ours (e.g. a typo) points to its longest module prefix
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules:
                edges.append(Edge(target, str(path.relative_to(root)), node.lineno,
                                  "module level" if func is None else f"in {func}()"))

    for node, func in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, func)
            continue
        if node.level:  # relative: from .x import y / from .. import z
            base = this_pkg.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        for alias in node.names:
            sub = f"{mod}.{alias.name}"
            add(sub if sub in modules else mod, node, func)
    return edges


def import_graph(pkg_dir: Path, pkg_name: str) -> tuple[dict[str, list[Edge]], dict[str, Path]]:
    modules = module_files(pkg_dir, pkg_name)
    root = pkg_dir.parent
    return {m: import_edges(m, p, modules, pkg_name, root) for m, p in modules.items()}, modules


def find_cycles(graph: dict[str, list[Edge]]) -> list[tuple[list[tuple[str, Edge | None]], list[str]]]:
    """One shortest cycle through each non-trivial strongly connected component (Tarjan), as
    ``([(module, edge to the next module), ..., (first module again, None)], component members)``."""
    succ = {m: sorted({e.target for e in es if e.target in graph}) for m, es in graph.items()}
    index, low, on_stack, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def strongconnect(v):  # iterative enough for a package: recursion depth = longest import chain
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sccs:
        members = set(comp)
        if len(comp) == 1 and comp[0] not in succ[comp[0]]:
            continue
        start = comp[0]
        # BFS inside the component for the shortest path start -> ... -> start
        prev, frontier, found = {}, [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in succ[v]:
                    if w not in members:
                        continue
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(prev[path[-1]])
        path = path[::-1] + [start]
        cycle = []
        for a, b in zip(path, path[1:]):
            cycle.append((a, next(e for e in graph[a] if e.target == b)))
        cycle.append((start, None))
        cycles.append((cycle, comp))
    return cycles


def spell(found) -> str:
    """``a -> b -> a`` plus where each edge is (and the other modules of the component, if any)."""
    cycle, members = found
    names = " -> ".join(m for m, _ in cycle)
    where = "; ".join(f"{m} -> {e.target} at {e.describe()}" for m, e in cycle if e is not None)
    rest = sorted(set(members) - {m for m, _ in cycle})
    return f"{names}  ({where})" + (f"  [same cycle component: {', '.join(rest)}]" if rest else "")


# ---------------------------------------------------------------------------------------------------
# the analysis, on a made-up package with known answers
# ---------------------------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root / "fake"


def test_analysis_finds_deferred_relative_and_reexport_cycles(tmp_path):
    pkg = _write(tmp_path, {
        "fake/__init__.py": "",
        "fake/a.py": "from fake import b\n",
        "fake/b.py": "def f():\n    from . import a  # deferred: still a cycle\n",
        "fake/sub/__init__.py": "from fake.sub.x import X\nfrom .y import Y\n",
        "fake/sub/x.py": "from .y import Y  # sibling, direct: fine\nX = 1\n",
        "fake/sub/y.py": "class Y:\n    def m(self):\n        from fake.sub import X  # back into the package\n",
        "fake/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fake import c\nelse:\n    pass\n",
        "fake/c.py": "import fake.typed\n",
        "fake/deep/__init__.py": "",
        "fake/deep/m.py": "from ..sub import x\nfrom ... import os  # outside the package: ignored\n",
    })
    graph, modules = import_graph(pkg, "fake")
    assert set(modules) == {"fake", "fake.a", "fake.b", "fake.sub", "fake.sub.x", "fake.sub.y", "fake.typed",
                            "fake.c", "fake.deep", "fake.deep.m"}
    targets = {m: sorted({e.target for e in es}) for m, es in graph.items()}
    assert targets["fake.a"] == ["fake.b"]  # "from fake import b": b is a submodule
    assert targets["fake.b"] == ["fake.a"]
    assert targets["fake.sub"] == ["fake.sub.x", "fake.sub.y"]
    assert targets["fake.sub.x"] == ["fake.sub.y"]
    assert targets["fake.sub.y"] == ["fake.sub"]  # a name from the package: its __init__
    assert targets["fake.typed"] == []  # TYPE_CHECKING only
    assert targets["fake.c"] == ["fake.typed"]
    assert targets["fake.deep.m"] == ["fake.sub.x"]
    (b_edge,) = graph["fake.b"]
    assert b_edge.line == 2 and b_edge.where == "in f()"
    found = sorted((" -> ".join(m for m, _ in c), members) for c, members in find_cycles(graph))
    assert found == [("fake.a -> fake.b -> fake.a", ["fake.a", "fake.b"]),
                     ("fake.sub -> fake.sub.y -> fake.sub", ["fake.sub", "fake.sub.x", "fake.sub.y"])]
    msg = spell(next(c for c in find_cycles(graph) if c[0][0][0] == "fake.a"))
    assert "fake/b.py:2, in f()" in msg and "fake/a.py:1, module level" in msg


def test_reexporting_package_without_back_import_has_no_cycle(tmp_path):
    pkg = _write(tmp_path, {
        "fake/__init__.py": "from fake.p import thing\n",
        "fake/p/__init__.py": "from fake.p.impl import thing\n",
        "fake/p/impl.py": "from fake.p import helpers\nthing = helpers.h\n",
        "fake/p/helpers.py": "h = 1\n",
        "fake/user.py": "from fake.p import thing\n",
    })
    graph, _ = import_graph(pkg, "fake")
    assert sorted(e.target for e in graph["fake.p.impl"]) == ["fake.p.helpers"]
    assert find_cycles(graph) == []


# ---------------------------------------------------------------------------------------------------
# ctrobust itself
# ---------------------------------------------------------------------------------------------------


def test_ctrobust_has_no_import_cycles():
    graph, modules = import_graph(PKG_DIR, "ctrobust")
    assert len(modules) > 20 and "ctrobust.store" in modules  # the walk saw the package
    assert sum(len(es) for es in graph.values()) > 50
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in ctrobust (deferred imports included):\n" + "\n".join(
        spell(c) for c in cycles)


_SYS_MODULES_PROBE = r"""
import json, sys
from importlib import metadata
import numpy, torch  # the allowed heavy dependencies are loaded first: their import is not ctrobust's doing
before = dict(sys.modules)
import ctrobust
after = dict(sys.modules)

def deps(dist, seen):
    name = dist.lower().replace("_", "-")
    if name in seen:
        return
    seen.add(name)
    try:
        reqs = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return
    for r in reqs:
        if "extra ==" in r:
            continue
        dep = r.split(";")[0].strip()
        for sep in "<>=!~[ (":
            dep = dep.split(sep)[0]
        deps(dep, seen)

allowed_dists = set()
for d in ("torch", "numpy"):
    deps(d, allowed_dists)
tops = {top for top, dists in metadata.packages_distributions().items()
        if any(x.lower().replace("_", "-") in allowed_dists for x in dists)} | {"torch", "numpy"}
print(json.dumps({
    "added": sorted(set(after) - set(before)),
    "removed": sorted(set(before) - set(after)),
    "replaced": sorted(k for k in before if k in after and after[k] is not before[k]),
    "aliases": sorted(k for k in set(after) - set(before)
                      if getattr(after[k], "__name__", k) != k),
    "dep_tops": sorted(tops),
    "stdlib": sorted(sys.stdlib_module_names),
}))
"""


def _probe(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_ctrobust_leaves_sys_modules_alone():
    """``import ctrobust`` (fresh interpreter, numpy and torch already imported) may add only ctrobust's own
    modules, standard-library modules and modules of torch's/numpy's declared dependencies; it must not
    import robustbench, register ``autoattack`` aliases (entries whose module has another name), or replace
    or remove any existing entry."""
    got = _probe(_SYS_MODULES_PROBE)
    allowed_tops = {"ctrobust"} | set(got["stdlib"]) | set(got["dep_tops"])
    foreign = [k for k in got["added"] if k.split(".")[0] not in allowed_tops]
    problems = {
        "robustbench/autoattack/pyautoattack entries": [k for k in got["added"] if k.split(".")[0] in
                                           ("robustbench", "autoattack", "pyautoattack")],
        "other foreign modules added": [k for k in foreign if k.split(".")[0] not in
                                        ("robustbench", "autoattack", "pyautoattack")],
        "aliases added (key != module __name__)": [k for k in got["aliases"]
                                                   if k.split(".")[0] not in set(got["dep_tops"])],
        "existing entries replaced": got["replaced"],
        "existing entries removed": got["removed"],
    }
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, "import ctrobust edited sys.modules:\n" + "\n".join(
        f"  {k}: {v}" for k, v in problems.items())


def test_no_ctrobust_module_imports_robustbench_at_import_time():
    """Every module of the package can be imported without robustbench (or the autoattack shim) being
    imported: it is loaded only when a RobustBench model or dataset is actually used."""
    names = sorted(module_files(PKG_DIR, "ctrobust"))
    code = textwrap.dedent(f"""
        import importlib, json, sys
        bad = {{}}
        for name in {names!r}:
            importlib.import_module(name)
            hit = sorted(k for k in sys.modules if k.split(".")[0] in ("robustbench", "autoattack"))
            if hit:
                bad[name] = hit
                break
        print(json.dumps(bad))
    """)
    bad = _probe(code)
    assert not bad, f"importing {next(iter(bad))} imported {bad[next(iter(bad))][:10]}"
