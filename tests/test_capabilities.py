"""The capability matrix: the committed page and JSON agree with the checks, run again here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mednext_zoo.benchmark import capabilities as caps
from mednext_zoo.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
REGENERATE = 'Regenerate with `python -m mednext_zoo.benchmark.capabilities --write` and commit both files.'
FAST = ('mednext_tiny', 'medunext_tiny')  # the rest run under -m slow (about 1-2 min each on 2 busy cores)


def test_committed_matrix_covers_every_model_and_column():
    rows, doc = caps.load_committed()
    assert list(rows) == caps.registered_models(), f'models changed. {REGENERATE}'
    assert doc['columns'] == list(caps.COLUMNS), f'columns changed. {REGENERATE}'
    for name, row in rows.items():
        assert list(row) == list(caps.COLUMNS), name
        assert all(cell.status in (caps.YES, caps.NO, caps.SKIP) for cell in row.values())


def test_docs_page_is_the_committed_json_rendered():
    rows, doc = caps.load_committed()
    assert caps.DOCS_PAGE.read_text() == caps.render_page(rows, doc), f'docs/capabilities.md edited by hand? ' \
                                                                       f'{REGENERATE}'
    models_page = (REPO / 'docs' / 'models.md').read_text()
    assert '--8<-- "docs/capabilities.md"' in models_page  # docs/models.md includes it


FAMILIES = {  # one test class each (below)
    'mednext': lambda n: n.startswith('mednext_'),
    'medunext': lambda n: n.startswith('medunext_') and not n.endswith('_hr'),
    'medunext_hr': lambda n: n.startswith('medunext_') and n.endswith('_hr'),
}


def _params(family):
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in caps.registered_models()
            if FAMILIES[family](n)]


def _agree_with_committed_matrix(name):
    committed, _ = caps.load_committed()
    live = caps.check_model(name)
    skipped = [c for c, cell in live.items() if cell.status == caps.SKIP]
    if skipped:
        pytest.skip(f'{name}: not checkable here ({", ".join(f"{c}: {live[c].note}" for c in skipped)})')
    diff = {c: (str(committed[name].get(c)), str(cell)) for c, cell in live.items() if committed[name].get(c) != cell}
    assert not diff, f'{name}: the committed matrix says / the checks say: {diff}. {REGENERATE}'


# One class per family: `pytest -n auto --dist loadscope` (the README's command) gives each class to a worker,
# so the three families' checks (about 8 CPU minutes in all) run side by side instead of on one worker.
class TestMedNeXtChecksAgreeWithCommittedMatrix:
    @pytest.mark.parametrize('name', _params('mednext'))
    def test_checks_agree_with_committed_matrix(self, name):
        _agree_with_committed_matrix(name)


class TestMedUNeXtChecksAgreeWithCommittedMatrix:
    @pytest.mark.parametrize('name', _params('medunext'))
    def test_checks_agree_with_committed_matrix(self, name):
        _agree_with_committed_matrix(name)


class TestMedUNeXtHrChecksAgreeWithCommittedMatrix:
    @pytest.mark.parametrize('name', _params('medunext_hr'))
    def test_checks_agree_with_committed_matrix(self, name):
        _agree_with_committed_matrix(name)


def test_every_model_has_a_matrix_check():
    assert sorted(p.values[0] for f in FAMILIES for p in _params(f)) == sorted(caps.registered_models())


def test_a_failing_check_becomes_a_no_cell(monkeypatch):
    def broken(ctx):
        raise RuntimeError('boom\nsecond line')
    monkeypatch.setitem(caps.CHECKS, 'TorchScript', broken)
    row = caps.check_model('mednext_tiny', columns=['TorchScript', 'dynamic size'])
    assert str(row['TorchScript']) == 'no: RuntimeError: boom'
    assert row['dynamic size'].status == caps.NO  # the fixed input size is a real "no", with its reason
    assert 'img_size=' in row['dynamic size'].note


def test_unknown_model_or_column_is_a_user_error():
    from mednext_zoo.errors import UserInputError
    with pytest.raises(UserInputError, match='not a registered'):
        caps.check_model('resnet18')
    with pytest.raises(UserInputError, match='Unknown capability column'):
        caps.check_model('mednext_tiny', columns=['flying'])


def test_cli_list_capabilities_prints_the_committed_matrix(capsys):
    assert cli_main(['list', '--capabilities']) == 0
    out = capsys.readouterr().out
    rows, _ = caps.load_committed()
    for name in rows:
        assert re.search(rf'^\| `{name}` \|', out, re.M), name
    assert 'no: fixed at construction' in out
