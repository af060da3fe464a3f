"""``mednext-zoo`` command line: a thin dispatcher over the package's layers.

Each module in this package that defines ``register(subparsers)`` adds its subcommands; the
parser it creates sets ``func`` (called with the parsed namespace, returns an exit code).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
import warnings
from typing import Optional, Sequence

from ..errors import MedNeXtZooError
from ..version import __version__


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default where it says something: not for required options, flags, options
    whose default is None (their help says what happens), or help texts that already name their default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if (action.required or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or 'default' in text.lower()):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='mednext-zoo',
        description='MedNeXt / MedUNeXt (Xue et al., PLoS One 2026): models, weights, benchmarks, fine-tuning.',
    )
    parser.add_argument('--version', action='version', version=f'mednext-zoo {__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith('_'):
            continue
        module = importlib.import_module(f'{__name__}.{info.name}')
        register = getattr(module, 'register', None)
        if register is not None:
            register(subparsers)
    for sub in subparsers.choices.values():
        sub.formatter_class = HelpFormatter
    return parser


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Warnings as one line each, ``mednext-zoo CMD: warning: MESSAGE``, instead of Python's source location and
    code line; a library's own warnings name it: ``... (UserWarning from torch)``."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = ' '.join(str(message).split())
        parts = os.path.normpath(str(filename)).split(os.sep)
        where = parts[parts.index('site-packages') + 1] if 'site-packages' in parts[:-1] else parts[-1]
        origin = '' if 'mednext_zoo' in parts else f' ({category.__name__} from {where})'
        print(f'mednext-zoo {command}: warning: {text}{origin}', file=file or sys.stderr, flush=True)

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        with _one_line_warnings(args.command):
            return int(args.func(args) or 0)
    except MedNeXtZooError as e:
        print(f'mednext-zoo {args.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, 'on_interrupt', None)  # e.g. finetune: the last checkpoint and the resume command
        more = hint(args, list(sys.argv[1:] if argv is None else argv)) if hint else ''
        print(f'mednext-zoo {args.command}: interrupted{". " + more if more else ""}', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
