"""The generated API reference (docs/reference/*.md) covers every public module, and every public class, function,
method and property it shows has a docstring (issue 14).

A public module is one whose dotted path has no part starting with ``_``; the command line (``mednext_zoo.cli``,
documented by ``--help``) and ``mednext_zoo.version`` are left out. Run ``python tests/test_docstrings.py`` for the
list of objects without a docstring on its own.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import pytest

griffe = pytest.importorskip('griffe')

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / 'docs' / 'reference'
NOT_IN_REFERENCE = ('mednext_zoo.cli', 'mednext_zoo.version')  # these and their submodules
_DIRECTIVE = re.compile(r'^::: (\S+)\n((?:    .*\n|\n)*)', re.M)


def reference_directives() -> List[tuple]:
    """(module path, explicit member names or None, members shown at all) for every ``:::`` in the reference."""
    out = []
    for page in sorted(REFERENCE.glob('*.md')):
        for m in _DIRECTIVE.finditer(page.read_text()):
            options = m.group(2)
            names = re.findall(r'^\s+- (\w+)$', options, re.M)
            shown = not re.search(r'^\s+members: false$', options, re.M)
            out.append((m.group(1), names or None, shown))
    return out


def _public_members(obj, names: Optional[Sequence[str]]) -> Iterator:
    if names is not None:
        for n in names:
            yield obj.get_member(n)
        return
    exported = set(obj.exports or ()) if obj.is_module else set()
    for name, member in obj.members.items():
        if name.startswith('_'):
            continue
        if member.is_alias and name not in exported:
            continue  # an import, documented where it is defined
        yield member


def _missing(obj, names: Optional[Sequence[str]] = None, seen: Optional[set] = None) -> Iterator[str]:
    seen = set() if seen is None else seen
    for member in _public_members(obj, names):
        target = member.final_target if member.is_alias else member
        if target.path in seen:
            continue
        seen.add(target.path)
        if target.is_module or (target.is_attribute and 'property' not in target.labels):
            continue  # constants are shown with their values; submodules get their own directive
        if not target.docstring:
            yield target.path
        if target.is_class:
            yield from _missing(target, None, seen)


def missing_docstrings() -> List[str]:
    """Dotted paths of the public classes, functions, methods and properties shown without a docstring."""
    package = griffe.load('mednext_zoo', search_paths=[str(REPO)], resolve_aliases=True,
                          resolve_external=False)
    seen: set = set()
    out = []
    for path, names, shown in reference_directives():
        module = package[path.split('.', 1)[1]] if '.' in path else package
        if not module.docstring:
            out.append(module.path)
        if shown:
            out += list(_missing(module, names, seen))
    return sorted(dict.fromkeys(out))


def test_reference_pages_name_real_modules():
    directives = reference_directives()
    assert len(directives) >= 20
    import importlib
    for path, names, _ in directives:
        module = importlib.import_module(path)
        for n in names or ():
            assert hasattr(module, n), f'{path}.{n}'


def public_modules() -> List[str]:
    """Dotted names of the package's public modules and packages, from the source tree."""
    out = []
    for path in sorted((REPO / 'mednext_zoo').rglob('*.py')):
        parts = list(path.relative_to(REPO).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        name = '.'.join(parts)
        if any(p.startswith('_') for p in parts) or name.startswith(NOT_IN_REFERENCE):
            continue
        out.append(name)
    return out


def test_every_public_module_is_in_the_reference():
    documented = {path for path, _, _ in reference_directives()}
    missing = [m for m in public_modules() if m not in documented]
    assert not missing, 'public modules without a ::: entry in docs/reference/*.md: ' + ', '.join(missing)


def test_member_lists_name_every_public_class_and_function():
    """A page that lists a module's members explicitly must not leave a public class or function out."""
    package = griffe.load('mednext_zoo', search_paths=[str(REPO)], resolve_aliases=True, resolve_external=False)
    left_out = []
    for path, names, shown in reference_directives():
        if names is None or not shown:
            continue
        module = package[path.split('.', 1)[1]]
        for name, member in module.members.items():
            if name.startswith('_') or member.is_alias or not (member.is_class or member.is_function):
                continue
            if name not in names:
                left_out.append(f'{path}.{name}')
    assert not left_out, 'not listed in the reference page: ' + ', '.join(left_out)


def test_every_public_object_in_the_reference_has_a_docstring():
    missing = missing_docstrings()
    assert not missing, f'{len(missing)} public objects without a docstring:\n  ' + '\n  '.join(missing)


if __name__ == '__main__':
    found = missing_docstrings()
    print('\n'.join(found))
    print(f'{len(found)} public objects without a docstring')
