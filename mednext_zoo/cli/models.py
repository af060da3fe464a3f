"""``mednext-zoo models``: list the architectures this package registers in timm."""
from __future__ import annotations

import argparse

import timm

from .. import models  # noqa: F401  (registers the architectures)


def _run(args: argparse.Namespace) -> int:
    for name in timm.list_models(['mednext*', 'medunext*']):
        print(name)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser('models', help='list the architectures registered in timm by mednext-zoo',
                              description='Print the MedNeXt / MedUNeXt architecture names that `import mednext_zoo` '
                                          'registers in timm (use them with timm.create_model).')
    p.set_defaults(func=_run)
