"""Release notes for a version tag: the CHANGELOG.md section of that version, checked against the package version.

    python .ci/release_notes.py v0.2.0 > notes.md

Fails (exit 1, a one-line reason) when the tag is not ``v`` + ``mednext_zoo/version.py``'s ``__version__``, or when
CHANGELOG.md has no dated ``## [X.Y.Z] - YYYY-MM-DD`` section for it (the release cut dates the "Unreleased" one).
Standard library only: the release workflow runs it before anything is installed.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_version(root: Path = ROOT) -> str:
    """``__version__`` from ``mednext_zoo/version.py``, read as text (importing the package would import torch)."""
    text = (root / 'mednext_zoo' / 'version.py').read_text()
    m = re.search(r'''^__version__\s*=\s*['"]([^'"]+)['"]''', text, re.M)
    if m is None:
        raise ValueError('mednext_zoo/version.py has no __version__ = "..." line')
    return m.group(1)


def section(changelog: str, version: str) -> str:
    """The body of ``## [version] - YYYY-MM-DD`` (up to the next ``## [``), stripped; ValueError when missing."""
    head = re.compile(rf'^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}\s*$', re.M)
    m = head.search(changelog)
    if m is None:
        raise ValueError(f'CHANGELOG.md has no dated section "## [{version}] - YYYY-MM-DD": cut the release first '
                         '(rename "Unreleased", add the date)')
    nxt = re.compile(r'^## \[', re.M).search(changelog, m.end())
    body = changelog[m.end():nxt.start() if nxt else len(changelog)].strip()
    if not body:
        raise ValueError(f'the CHANGELOG.md section of {version} is empty')
    return body + '\n'


def notes(tag: str, root: Path = ROOT) -> str:
    """Release notes for ``tag`` (``vX.Y.Z``), after checking it names the package version."""
    version = package_version(root)
    if tag != f'v{version}':
        raise ValueError(f'tag {tag!r} is not v{version}, the version in mednext_zoo/version.py')
    return section((root / 'CHANGELOG.md').read_text(), version)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print('usage: python .ci/release_notes.py vX.Y.Z', file=sys.stderr)
        return 2
    try:
        sys.stdout.write(notes(argv[0]))
    except ValueError as e:
        print(f'release_notes: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
