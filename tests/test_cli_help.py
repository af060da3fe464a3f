"""``--help`` of every subcommand: a description, help text on every option, no default shown for a required one."""
import argparse

import pytest

from mednext_zoo.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    raise AssertionError('no subcommands')


def test_every_subcommand_documents_every_option():
    subs = _subparsers(build_parser())
    assert {'finetune', 'evaluate', 'predict', 'list', 'models', 'export', 'push', 'bench'} <= set(subs)
    problems = []
    for name, sub in subs.items():
        if not (sub.description or '').strip():
            problems.append(f'{name}: no description')
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            opt = '/'.join(action.option_strings) or action.dest
            if not (action.help or '').strip() or action.help == argparse.SUPPRESS:
                problems.append(f'{name} {opt}: no help text')
            shown = formatter._get_help_string(action) or ''
            if action.required and '(default' in shown:
                problems.append(f'{name} {opt}: required but shows a default')
            if '(default: None)' in shown or '(default: False)' in shown:
                problems.append(f'{name} {opt}: shows an empty default')
    assert not problems, '\n'.join(problems)


def test_finetune_help_names_both_tasks(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(['finetune', '--help'])
    out = capsys.readouterr().out
    assert 'segmentation' in out and 'classifier' in out
    assert '(default: None)' not in out
    assert 'training epochs (--task seg: 100) (default: 30)' in ' '.join(out.split())
    with pytest.raises(SystemExit):
        build_parser().parse_args(['--help'])
    top = capsys.readouterr().out
    assert 'fine-tune a classifier (image folder / CSV) or, with --task seg, a segmentation model' in ' '.join(
        top.split())
