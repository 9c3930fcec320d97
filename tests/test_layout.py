"""The package's layout as docs/layout.md states it: every import in src/tinyrlhf (lazy ones inside functions
too) goes to the same layer or one below, no files import each other around a circle, and no module uses
another module's _private names. The layer table is read from the doc, so the doc cannot drift from the code."""
from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
PKG = "tinyrlhf"
MAX_LINES = 450  # "files under ~400 lines" (DESIGN.md); the before-stop hook flags files past 450


def modules(src: str = SRC, pkg: str = PKG) -> dict[str, str]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__)."""
    out = {}
    for d, _, files in os.walk(os.path.join(src, pkg)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                name = os.path.relpath(path, src)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def _owner(name: str, mods: dict) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imports(mods: dict[str, str], pkg: str = PKG):
    """(importer, imported module, imported names, line) for every import of the package's own modules."""
    for mod, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != pkg:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in mods:  # `from . import metrics`: the module itself
                        yield mod, sub, [], node.lineno
                    else:
                        yield mod, _owner(base, mods), [alias.name], node.lineno
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == pkg:
                        yield mod, _owner(alias.name, mods), [], node.lineno


def edges(mods: dict[str, str], pkg: str = PKG) -> dict[str, set[str]]:
    """Import graph between files. A package's __init__ re-exporting its own modules is not an edge back:
    importing `tinyrlhf.config.base` runs `tinyrlhf/config/__init__.py` first, but base.py does not
    depend on what the __init__ re-exports."""
    out: dict[str, set[str]] = {m: set() for m in mods}
    for mod, target, _, _ in imports(mods, pkg):
        if target and target != mod and not (mods[target].endswith("__init__.py") and mod.startswith(target + ".")):
            out[mod].add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_uses(mods: dict[str, str], pkg: str = PKG) -> list[str]:
    """`from .x import _name` across modules, and `alias._name` on a module imported as `alias`."""
    out = []
    for mod, target, names, line in imports(mods, pkg):
        for n in names:
            if target != mod and n.startswith("_") and not n.startswith("__"):
                out.append(f"{mods[mod]}:{line}: imports {n} from {target}")
    for mod, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == pkg):
                for a in node.names:
                    aliases[a.asname or a.name] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                out.append(f"{path}:{node.lineno}: uses {node.value.id}.{node.attr}")
    return out


def layer_table(doc: str = os.path.join(ROOT, "docs", "layout.md")) -> dict[str, int]:
    """First name under tinyrlhf (module or package) -> layer rank (0 = lowest), from the doc's table."""
    text = open(doc, encoding="utf-8").read()
    block = re.search(r"<!-- layers.*?-->\s*```text\n(.*?)```\s*<!-- /layers -->", text, re.S)
    assert block, f"{doc}: no layer table between <!-- layers --> and <!-- /layers -->"
    rows = [line.split() for line in block.group(1).strip().splitlines()]
    rank = {}
    for i, (_, *names) in enumerate(reversed(rows)):
        for n in names:
            assert n not in rank, f"{doc}: '{n}' is in two layers"
            rank[n] = i
    return rank


def top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(mods: dict[str, str], rank: dict[str, int], pkg: str = PKG) -> list[str]:
    out = []
    for mod, target, _, line in imports(mods, pkg):
        if target and rank[top(target)] > rank[top(mod)]:
            out.append(f"{mods[mod]}:{line}: {mod} imports {target}, a layer above it")
    return out


MODS = modules()


def test_every_module_has_a_layer():
    rank = layer_table()
    missing = sorted({top(m) for m in MODS} - set(rank))
    assert not missing, f"docs/layout.md gives no layer to: {', '.join(missing)}"
    stale = sorted(set(rank) - {top(m) for m in MODS})
    assert not stale, f"docs/layout.md names what src/tinyrlhf does not have: {', '.join(stale)}"


def test_imports_go_down_the_layers():
    assert layer_violations(MODS, layer_table()) == []


def test_no_import_circles():
    assert cycles(edges(MODS)) == []


def test_no_private_names_across_modules():
    assert private_uses(MODS) == []


def test_every_package_says_what_it_holds_and_may_import():
    for mod, path in MODS.items():
        if path.endswith("__init__.py") and mod != PKG:
            doc = ast.get_docstring(ast.parse(open(path, encoding="utf-8").read()))
            assert doc and "May import" in doc, f"{path}: the package docstring must say what it may import"


def test_files_stay_readable():
    long = {p: n for p in MODS.values() if (n := sum(1 for _ in open(p, encoding="utf-8"))) > MAX_LINES}
    assert long == {}


# The checks themselves, on a package written here: each must catch what it is for.
@pytest.fixture
def toy(tmp_path):
    def write(files: dict[str, str]):
        for rel, body in files.items():
            p = tmp_path / "toy" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(body)
        return modules(str(tmp_path), "toy")
    return write


def test_checks_find_a_circle_a_lazy_import_and_private_names(toy):
    mods = toy({"__init__.py": "", "a.py": "from .b import f\n",
                "b.py": "def f():\n    from .c import g\n", "c.py": "from . import a as A\nx = A._hidden\n",
                "d.py": "from .a import _secret\n", "sub/__init__.py": "from .e import h\n", "sub/e.py": "h = 1\n"})
    graph, private = edges(mods, "toy"), private_uses(mods, "toy")
    assert cycles(graph) == [["toy.a", "toy.b", "toy.c"]]  # b -> c only through an import inside a function
    assert "toy.sub" not in graph["toy.sub.e"]  # the __init__'s own re-export is no circle
    assert [p.split(": ", 1)[1] for p in private] == ["imports _secret from toy.a", "uses A._hidden"]


def test_layer_check_flags_an_upward_import(toy, tmp_path):
    mods = toy({"__init__.py": "", "low.py": "from .high import x\n", "high.py": "x = 1\n"})
    doc = tmp_path / "layout.md"
    doc.write_text("<!-- layers -->\n```text\nupper  high\nlower  low toy\n```\n<!-- /layers -->\n")
    found = layer_violations(mods, layer_table(str(doc)), "toy")
    assert len(found) == 1 and "toy.low imports toy.high, a layer above it" in found[0]
