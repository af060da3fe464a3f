"""``mednext-zoo reproduce TAG --data DIR --out RUN``: train a pretrained tag from its public release."""
from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from ..reproduce import reproduce

    reproduce(args.tag, args.data, args.out, epochs=args.epochs, seeds=args.seeds, dry_run=args.dry_run,
              resume=args.resume, overwrite=args.overwrite, device=args.device, amp=args.amp,
              batch_size=args.batch_size, img_size=args.img_size, allow_partial=args.allow_partial,
              timing_steps=args.timing_steps, num_workers=args.workers, progress=not args.no_progress,
              n_bootstrap=args.bootstrap)
    return 0


def register(subparsers) -> None:
    from ..reproduce.tag_protocols import PROTOCOLS

    p = subparsers.add_parser(
        'reproduce', help='train a pretrained tag from its downloaded public dataset into a Hub folder',
        description='Recognise the downloaded release, check it, split it by the tag\'s protocol, train (AMP, any '
                    'device, torchrun), evaluate on the protocol\'s test split and write RUN/export/ (config.json, '
                    'model.safetensors, a card with the measured figures next to the paper\'s). '
                    'Tags: ' + ', '.join(PROTOCOLS) + '.')
    p.add_argument('tag', metavar='TAG', help='pretrained tag: ' + ', '.join(PROTOCOLS))
    p.add_argument('--data', required=True, help='folder the release was unpacked into')
    p.add_argument('--out', help='run folder (RUN/export is the Hub folder); not needed with --dry-run')
    p.add_argument('--dry-run', action='store_true', help='check the data and print the plan; train nothing')
    p.add_argument('--seeds', type=int, default=1, help='train this many of the protocol\'s seeds (3: the card '
                                                        'reports mean ± std); default 1')
    p.add_argument('--epochs', type=int, help='override the protocol\'s epochs (recorded in the card)')
    p.add_argument('--batch-size', type=int, help='override the protocol\'s batch size (per process; recorded)')
    p.add_argument('--resume', action='store_true', help='continue an interrupted run in --out')
    p.add_argument('--overwrite', action='store_true', help='replace an existing run in --out')
    p.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N (torchrun sets one GPU per process)')
    p.add_argument('--amp', default='auto', help='auto (bf16 / fp16 on CUDA, off on CPU) | none | bf16 | fp16')
    p.add_argument('--allow-partial', action='store_true',
                   help='train on a copy that differs from the published release (differences are recorded)')
    p.add_argument('--timing-steps', type=int, default=3, help='training steps timed for the estimate (0: none)')
    p.add_argument('--workers', type=int, default=0, help='data-loader worker processes')
    p.add_argument('--bootstrap', type=int, default=1000, help='bootstrap resamples for the 95%% CIs')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.add_argument('--img-size', type=int, help='testing only: a smaller input than the tag\'s 224 x 224 (recorded as '
                                                'a deviation; not for weights to publish)')
    p.set_defaults(func=_run)
