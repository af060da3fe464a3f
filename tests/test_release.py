"""The release pipeline's own logic: release notes from CHANGELOG.md, checked against the package version
(``.ci/release_notes.py``, run by ``.github/workflows/release.yml`` before anything is built)."""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('release_notes', REPO / '.ci' / 'release_notes.py')
rn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rn)

CHANGELOG = """# Changelog

## [Unreleased]

### Added
- later

## [0.2.0] - 2026-12-09

### Added
- a model

### Fixed
- a bug

## [0.1.0] - 2026-01-01

- first
"""


def test_section_is_the_dated_block_up_to_the_next_version():
    assert rn.section(CHANGELOG, '0.2.0') == '### Added\n- a model\n\n### Fixed\n- a bug\n'
    assert rn.section(CHANGELOG, '0.1.0') == '- first\n'
    with pytest.raises(ValueError, match=r'no dated section "## \[0.3.0\]'):
        rn.section(CHANGELOG, '0.3.0')
    with pytest.raises(ValueError, match='no dated section'):  # "Unreleased" is not a release
        rn.section(CHANGELOG.replace('## [0.2.0] - 2026-12-09', '## [0.2.0]'), '0.2.0')


def test_tag_must_be_the_package_version(tmp_path):
    (tmp_path / 'mednext_zoo').mkdir()
    (tmp_path / 'mednext_zoo' / 'version.py').write_text('__version__ = "0.2.0"\n')
    (tmp_path / 'CHANGELOG.md').write_text(CHANGELOG)
    assert rn.notes('v0.2.0', tmp_path).startswith('### Added\n- a model')
    with pytest.raises(ValueError, match="tag 'v0.1.0' is not v0.2.0"):
        rn.notes('v0.1.0', tmp_path)
    assert rn.main(['v9.9.9']) == 1  # the real repository: no such version


def test_package_version_is_read_from_the_one_place():
    import mednext_zoo
    assert rn.package_version() == mednext_zoo.__version__


def test_workflows_run_the_ci_script_and_the_release_notes():
    ci = (REPO / '.github' / 'workflows' / 'ci.yml').read_text()
    release = (REPO / '.github' / 'workflows' / 'release.yml').read_text()
    assert 'run: .ci/run' in ci and all(f'"{v}"' in ci for v in ('3.10', '3.11', '3.12', '3.13'))
    assert 'macos-latest' in ci and 'windows-latest' in ci
    assert 'python .ci/release_notes.py "$GITHUB_REF_NAME"' in release and 'id-token: write' in release
    assert 'twine check --strict' in release and 'pypa/gh-action-pypi-publish@' in release
