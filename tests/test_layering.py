"""The house keeps its shape: every import in ``mednext_zoo`` points down the floors, no module imports itself back
through others, and no package reaches into another's private names (issue 22).

The import graph is read from the source (``ast``: every ``import`` / ``from ... import``, the ones inside functions
too), so a lazy import counts like any other. A package is a top-level part of ``mednext_zoo`` (``models``,
``finetune``, ``catalog``, ...); it may use a lower floor and itself, nothing else.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'mednext_zoo'

# Lowest first. A package may import only packages on lower floors (and itself); packages on one floor are siblings
# that never import each other (the data layer needs nothing of the models, the reproduction nothing of the benchmark).
FLOORS: List[Set[str]] = [
    {'errors', 'version'},
    {'_atomic', '_cpuload', 'catalog', 'machine'},  # shared internals and facts
    {'metrics'},
    {'models', 'data'},
    {'hub'},
    {'finetune'},
    {'deploy'},
    {'benchmark', 'reproduce'},
    {'cli'},
    {'__init__'},  # the package facade: ``import mednext_zoo`` registers the models
]
SHARED_PRIVATE = {'_atomic', '_cpuload'}  # the distribution's shared internals (atomic writes, CPU load)

Edge = Tuple[str, str, str, int]  # (importer module, imported module, imported name or '', line)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split('.'))
    return (ROOT / rel).with_suffix('.py').is_file() or (ROOT / rel / '__init__.py').is_file()


def import_edges() -> List[Edge]:
    """Every import of a ``mednext_zoo`` module by a ``mednext_zoo`` module."""
    edges: List[Edge] = []
    for path in sorted(PACKAGE.rglob('*.py')):
        mod = module_name(path)
        pkg = mod if path.name == '__init__.py' else mod.rsplit('.', 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges += [(mod, a.name, '', node.lineno) for a in node.names if a.name.split('.')[0] == 'mednext_zoo']
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split('.')[:len(pkg.split('.')) - node.level + 1]
                    target = '.'.join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ''
                if target.split('.')[0] != 'mednext_zoo':
                    continue
                for a in node.names:
                    sub = f'{target}.{a.name}'
                    if is_module(sub):  # ``from package import submodule``
                        edges.append((mod, sub, '', node.lineno))
                    else:
                        edges.append((mod, target, a.name, node.lineno))
    return edges


def top(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else '__init__'


def floor_of() -> Dict[str, int]:
    return {p: i for i, floor in enumerate(FLOORS) for p in floor}


def test_every_package_has_a_floor():
    floors = floor_of()
    packages = {top(module_name(p)) for p in PACKAGE.rglob('*.py')}
    assert not packages - set(floors), f'place these in FLOORS: {sorted(packages - set(floors))}'
    assert not set(floors) - packages, f'FLOORS names packages that do not exist: {sorted(set(floors) - packages)}'


def test_no_import_points_up_or_sideways():
    floors = floor_of()
    bad = [f'{a}:{line} imports {b} ({top(a)} floor {floors[top(a)]} -> {top(b)} floor {floors[top(b)]})'
           for a, b, _, line in import_edges()
           if top(a) != top(b) and floors[top(b)] >= floors[top(a)]]
    assert not bad, 'imports that point up or sideways:\n  ' + '\n  '.join(bad)


def test_no_private_name_crosses_a_package():
    def private(part: str) -> bool:
        return part.startswith('_') and not part.startswith('__')

    bad = []
    for a, b, name, line in import_edges():
        if top(a) == top(b) or top(b) in SHARED_PRIVATE:
            continue
        path = b.split('.')[2:]  # below the package: mednext_zoo.models._pretrained -> ['_pretrained']
        if private(name) or any(private(p) for p in path):
            bad.append(f'{a}:{line} imports {b}{"." + name if name else ""}')
    assert not bad, 'private names imported from another package:\n  ' + '\n  '.join(bad)


def test_no_import_circles():
    graph: Dict[str, Set[str]] = {}
    for a, b, _, _ in import_edges():
        graph.setdefault(a, set()).add(b)
    # Tarjan's strongly connected components: any component of two or more modules is a circle
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    circles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
            if len(comp) > 1 or v in graph.get(v, ()):
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, 'modules that import each other (directly or around a circle):\n  ' + '\n  '.join(
        ' <-> '.join(c) for c in circles)


def test_the_checks_see_what_they_guard():
    """The walker finds the imports it checks: lazy ones inside functions, ``from package import submodule``, and the
    private loader behind the models' public names."""
    edges = import_edges()
    pairs = {(a, b) for a, b, _, _ in edges}
    assert ('mednext_zoo.finetune.segmentation.data', 'mednext_zoo.finetune.recipe') in pairs  # inside a method
    assert ('mednext_zoo.models', 'mednext_zoo.models._pretrained') in pairs
    assert ('mednext_zoo.reproduce.record', 'mednext_zoo.machine') in pairs
    assert len(edges) > 300
    floors = floor_of()
    assert floors['catalog'] < floors['models'] == floors['data'] < floors['finetune'] < floors['benchmark'] \
        == floors['reproduce']
