"""No import cycles in ``lightning_kd/``.

Every module is parsed with :mod:`ast` (never imported) and every import statement that can run
counts: at module level, inside functions and classes, absolute and relative, and the package
``__init__`` an import runs first (``import a.b.c`` executes ``a/b/__init__.py``, which may re-export,
i.e. import, other modules). Only imports under ``if TYPE_CHECKING:`` are left out: they never run.
A cycle is a strongly connected component of more than one module; the test names each one with the
import statements that close it. The helpers are tested on small made-up packages, so the test can
fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Edges = dict[str, dict[str, str]]  # module -> {imported module: "file:line" of the first such import}


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir`` (a package's name is its ``__init__``'s)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _type_only(tree: ast.AST) -> set[int]:
    """``id``s of the import statements inside ``if TYPE_CHECKING:`` bodies (type checkers read them; Python never runs them)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may load (the ``from`` base and ``base.name`` for each name)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: level 1 is the importer's own package
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(package_dir: Path) -> Edges:
    """The import edges between the modules of ``package_dir``.

    An import of ``a.b.c`` from outside package ``a.b`` also depends on ``a.b`` (its ``__init__`` runs
    first); from inside ``a.b`` it does not, since the package is then already being initialised.
    """
    modules = module_names(package_dir)
    edges: Edges = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        type_only = _type_only(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in type_only:
                continue
            where = f"{path.relative_to(package_dir.parent)}:{node.lineno}"
            for target in _imported(node, name, is_package):
                if target not in modules:
                    continue
                parts = target.split(".")
                implied = [".".join(parts[:i]) for i in range(1, len(parts))]
                for dependency in [target, *(p for p in implied if p in modules and p not in ancestors)]:
                    if dependency != name:
                        edges[name].setdefault(dependency, where)
    return edges


def cycles(edges: Edges) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(component: list[str], edges: Edges) -> str:
    """One cycle through ``component`` (breadth-first from its first module), with each import's place."""
    members, start = set(component), component[0]
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(edges[node]):
            if child in members and child not in previous:
                previous[child] = node
                queue.append(child)
    path, node = [start], previous[start]
    while node != start:
        path.append(node)
        node = previous[node]
    path.append(start)
    path.reverse()
    steps = [f"{a} -> {b} ({edges[a][b]})" for a, b in zip(path, path[1:])]
    return f"{len(component)} modules {component}:\n    " + "\n    ".join(steps)


def test_lightning_kd_has_no_import_cycles():
    edges = import_graph(ROOT / "lightning_kd")
    assert len(edges) > 100, "the package was not found"
    found = cycles(edges)
    assert not found, "import cycles in lightning_kd:\n" + "\n".join(describe(c, edges) for c in found)


# ----------------------------------------------------------------- the helpers on made-up packages
def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_finds_a_cycle_through_a_function_level_and_a_relative_import(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import f\n",
            "sub/__init__.py": "",
            "b.py": "def f():\n    from .sub import c\n",
            "sub/c.py": "from ..a import x\n",
        },
    )
    edges = import_graph(package)
    assert edges["pkg.b"] == {"pkg.sub": "pkg/b.py:2", "pkg.sub.c": "pkg/b.py:2"}
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert "pkg.a -> pkg.b (pkg/a.py:1)" in describe(cycles(edges)[0], edges)


def test_finds_a_cycle_through_a_package_reexport(tmp_path):
    # models.x imports nothing cyclic by name, but importing pkg.tools.y first runs tools/__init__,
    # which re-exports tools.z, which imports models.x.
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "models/__init__.py": "",
            "models/x.py": "import pkg.tools.y\n",
            "tools/__init__.py": "from pkg.tools.z import Z\n",
            "tools/y.py": "",
            "tools/z.py": "from pkg.models.x import X\n",
        },
    )
    assert cycles(import_graph(package)) == [["pkg.models.x", "pkg.tools", "pkg.tools.z"]]


def test_a_package_importing_its_own_modules_and_type_only_imports_are_no_cycle(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",
            "a.py": "from pkg.b import B\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\nelse:\n    import os\n",
        },
    )
    edges = import_graph(package)
    assert edges == {"pkg": {"pkg.a": "pkg/__init__.py:1", "pkg.b": "pkg/__init__.py:2"}, "pkg.a": {"pkg.b": "pkg/a.py:1"}, "pkg.b": {}}
    assert cycles(edges) == []
