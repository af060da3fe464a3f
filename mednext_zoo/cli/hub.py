"""``mednext-zoo list | export | push``: pretrained tags and their status, Hub folders, uploads."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserInputError


def _run_capabilities(args: argparse.Namespace) -> int:
    from ..benchmark import capabilities as caps

    if args.check:
        rows = caps.check_models(progress=lambda n: print(f'checking {n} ...', file=sys.stderr, flush=True))
        doc = caps.to_json(rows)
    else:
        rows, doc = caps.load_committed()
    print(json.dumps(doc, indent=2) if args.json else caps.render_markdown(rows, doc))
    return 0


def _run_list(args: argparse.Namespace) -> int:
    from ..hub import list_pretrained

    if args.check and not args.capabilities:
        raise UserInputError('--check re-runs the capability checks: use it with --capabilities.')
    if args.capabilities:
        return _run_capabilities(args)
    rows = list_pretrained()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ('MODEL', 'TAG', 'DATASET', 'STATUS', 'HUB ID')
    table = [
        (r['model'], (r['tag'] + (' (default)' if r.get('default') else '')) or '-', r['dataset'] or '-',
         r['status'], r['hub_id'] or '-')
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    for line in (headers, *table):
        print('  '.join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    published = sum(r['status'] == 'published' for r in rows)
    print(f'\n{published} of {sum(bool(r["tag"]) for r in rows)} pretrained tags published. '
          'Load one: import mednext_zoo, timm; timm.create_model("MODEL.TAG", pretrained=True)')
    return 0


def _read_metrics(path: str):
    try:
        metrics = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise UserInputError(f'Metrics file not found: {path}') from e
    except json.JSONDecodeError as e:
        raise UserInputError(f'{path} is not valid JSON ({e}).') from e
    if not isinstance(metrics, dict):
        raise UserInputError(f'{path} must hold a JSON object {{"metric": value | {{"value": v, "ci": [lo, hi]}}}}.')
    return metrics


def _export_inputs(args: argparse.Namespace) -> dict:
    return {'MODEL': args.model, 'OUT_DIR': args.out_dir, '--checkpoint': args.checkpoint}


def _run_fix_config(args: argparse.Namespace) -> int:
    from ..hub import FIX_RECORD_NAME, fix_config

    given = [k for k, v in _export_inputs(args).items() if v]
    if given:
        raise UserInputError(f'--fix-config FOLDER repairs an existing folder; drop {", ".join(given)}.')
    folder = Path(args.fix_config)
    changes = fix_config(folder)
    if not changes:
        print(f'{folder / "config.json"} is up to date: nothing changed.')
        return 0
    print(f'Fixed {folder / "config.json"}:')
    for c in changes:
        print(f'  - {c}')
    print(f'The config before the fix is kept in {folder / FIX_RECORD_NAME}.')
    config = json.loads((folder / 'config.json').read_text())
    if config['architecture'].startswith('medunext'):
        print('Note: segmentation networks (MedUNeXt) are timm-only; transformers does not support them.')
    elif not config.get('label_names'):
        print('Note: no label names are recorded, so transformers names the outputs LABEL_0, LABEL_1, ...')
    return 0


def _given(args: argparse.Namespace, *flags: str) -> list:
    return [f for f in flags if getattr(args, f.lstrip('-').replace('-', '_'), None) not in (None, False, [])]


def _labels(args: argparse.Namespace):
    if not args.labels:
        return None
    names = [n.strip() for n in args.labels.split(',')]
    if not all(names) or len(set(names)) != len(names):
        raise UserInputError(f'--labels {args.labels!r}: give distinct, non-empty class names separated by commas, '
                             'in output order (e.g. --labels normal,pneumonia).')
    return names


def _explicit_preprocessing(args: argparse.Namespace, model):
    """The recipe given on the command line (--preprocessing FILE or, for a classifier, --window), or None."""
    if args.preprocessing and args.window:
        raise UserInputError('Give the preprocessing once: --preprocessing FILE (the whole recipe) or --window (a '
                             "classifier's window), not both.")
    if args.preprocessing:
        from ..data.preprocessing import as_spec
        return as_spec(args.preprocessing), f'--preprocessing {args.preprocessing}'
    if args.window:
        from ..deploy.preprocessing import spec_for_model
        return spec_for_model(model, args.window), f'--window {args.window}'
    return None, None


def _run_export(args: argparse.Namespace) -> int:
    deploy_flags = _given(args, '--int8', '--calibration', '--sample')
    if args.fix_config:
        if args.format != 'hub' or deploy_flags or _given(args, '--window', '--preprocessing', '--labels'):
            raise UserInputError('--fix-config repairs a Hub folder: drop --format / --int8 / --calibration / '
                                 '--window / --preprocessing / --labels.')
        return _run_fix_config(args)
    if args.format != 'hub':
        from ..deploy.export import check_export_request
        check_export_request(args.format, args.int8, args.calibration)
        hub_only = _given(args, '--metrics', '--split', '--training', '--repo-id', '--seed-cache')
        if hub_only:
            raise UserInputError(f'{", ".join(hub_only)} describe a Hub folder: drop them with --format {args.format}.')
    elif deploy_flags:
        raise UserInputError(f'{", ".join(deploy_flags)} apply to --format onnx / openvino, not to a Hub folder.')
    if not args.model or not args.out_dir:
        if args.format == 'hub':
            raise UserInputError('export needs MODEL OUT_DIR: a fine-tuning run folder (or its export/), or an '
                                 'architecture with --checkpoint FILE (or mednext-zoo export --fix-config FOLDER to '
                                 'repair an older folder).')
        raise UserInputError(f'export --format {args.format} needs MODEL OUT_DIR: MODEL is a fine-tuning run folder '
                             '(or its export/), a Hub folder written by `mednext-zoo export`, or an architecture '
                             'with --checkpoint FILE.')
    labels = _labels(args)
    if Path(args.model).is_dir():
        return _export_folder(args, labels)
    if not args.checkpoint:
        if args.format == 'hub':
            raise UserInputError('export needs --checkpoint: mednext-zoo export MODEL OUT_DIR --checkpoint FILE, or '
                                 'give a fine-tuning run folder as MODEL (or mednext-zoo export --fix-config FOLDER '
                                 'to repair an older folder).')
        raise UserInputError(f'export --format {args.format} needs trained weights: --checkpoint FILE, or give a '
                             'fine-tuning run folder (or a Hub folder written by `mednext-zoo export`) as MODEL.')
    from ..hub import DATASETS

    model, dataset = _model_with_checkpoint(args)
    if labels is None and dataset in DATASETS:
        labels = list(DATASETS[dataset]['label_names'])
    spec, spec_from = _explicit_preprocessing(args, model)
    if args.format != 'hub':
        return _deploy(args, model, spec, spec_from, labels, record=None)
    from ..hub import save_pretrained

    metrics = _read_metrics(args.metrics) if args.metrics else None
    out = save_pretrained(model, args.out_dir, dataset=dataset, metrics=metrics, split=args.split,
                          training=args.training, label_names=labels, repo_id=args.repo_id, flops=not args.no_flops,
                          preprocessing=spec)
    _print_hub(out, spec)
    return _seed_cache(args, out, args.model.split('.', 1)[0], dataset)


def _export_folder(args: argparse.Namespace, labels) -> int:
    """MODEL is a run folder, a run's export/ or a Hub folder: everything comes from what it recorded."""
    from ..deploy.sources import open_source

    own = _given(args, '--checkpoint', '--num-classes', '--in-chans', '--img-size', '--dataset', '--allow-pickle')
    if own:
        raise UserInputError(f'{args.model} carries its own weights, classes and input size: drop {", ".join(own)}.')
    source = open_source(args.model)
    if labels is not None and source.label_names:
        raise UserInputError(f'{args.model} records its labels ({", ".join(source.label_names)}): drop --labels.')
    if source.spec is not None and _given(args, '--window', '--preprocessing'):
        raise UserInputError(f'{args.model} records the preprocessing the model was trained with '
                             f'({source.spec.summary()}): drop --window / --preprocessing, which would contradict it.')
    spec, spec_from = (source.spec, source.spec_from) if source.spec is not None else \
        _explicit_preprocessing(args, source.model)
    labels = source.label_names or labels
    if args.format != 'hub':
        return _deploy(args, source.model, spec, spec_from, labels, record=source.record)
    if source.run_dir is None:
        raise UserInputError(f'{args.model} is already a Hub folder: copy it, or deploy it with --format onnx / '
                             'openvino.')
    card = _given(args, '--metrics', '--split', '--training')
    if card:
        raise UserInputError(f'{", ".join(card)}: the card of a run\'s export comes from the run\'s own records; '
                             'drop them.')
    if source.task == 'segmentation':
        from ..finetune.segmentation.task import export_run
    else:
        from ..finetune.classification.task import export_run
    out = Path(export_run(source.run_dir, args.out_dir))
    print(f'Re-exported the run {source.run_dir} (best weights, labels, evaluation resize, preprocessing and metrics '
          f'from its records).')
    _print_hub(out, source.spec)
    return _seed_cache(args, out, json.loads((out / 'config.json').read_text())['architecture'], None)


def _print_hub(out: Path, spec) -> None:
    print(f'Wrote {out}/config.json, model.safetensors, README.md')
    if spec is not None:
        print(f'Preprocessing recorded in config.json: {spec.summary()}.')
    else:
        print('Note: no preprocessing is recorded (give --window or --preprocessing FILE to record it); '
              '`export --format onnx|openvino` of this folder will need it.')
    print(f'Check it: python -c "import mednext_zoo, timm; timm.create_model(\'local-dir:{out}\', pretrained=True)"')


def _seed_cache(args: argparse.Namespace, out: Path, arch: str, dataset) -> int:
    if args.seed_cache:
        from ..catalog import hub_id
        from ..hub import DATASETS, seed_hf_cache

        repo = args.repo_id or (hub_id(arch, dataset) if dataset in DATASETS else None)
        if repo is None:
            raise UserInputError('--seed-cache needs --repo-id OWNER/NAME for a model without a paper dataset tag.')
        snap = seed_hf_cache(out, repo)
        print(f'Seeded the Hugging Face cache: {snap}')
    return 0


def _deploy(args: argparse.Namespace, model, spec, spec_from, labels, record) -> int:
    """``--format onnx|openvino`` with the recipe the model was trained with (refused without one)."""
    from ..deploy import export_model

    if spec is None:
        raise UserInputError(f'export --format {args.format} needs the preprocessing the model was trained with, so '
                             'that the artefact is fed what it learned on, and none is recorded for '
                             f'{args.model}: export the fine-tuning run folder (or its export/) instead, or pass '
                             '--preprocessing FILE (a run\'s export/config.json, segmentation.json or an '
                             "artefact's preprocessing.json), or for a classifier --window (a CT preset, "
                             '"LEVEL,WIDTH", "file", or "minmax" for min-max scaling).')
    report = export_model(model, args.out_dir, fmt=args.format, int8=args.int8, calibration=args.calibration,
                          label_names=labels, calibration_limit=args.calibration_limit, preprocessing=spec,
                          record=record, samples=args.sample or (), preprocessing_source=spec_from)
    print(report.summary())
    return 0


def _model_with_checkpoint(args: argparse.Namespace):
    """MODEL built with ``--checkpoint``'s weights as they are (no head / input adaptation), and its dataset."""
    import timm

    from ..catalog import PRETRAINED_TAGS
    from ..hub import DATASETS, load_state_dict

    name = args.model
    arch = name.split('.', 1)[0]
    if not timm.is_model(arch):
        raise UserInputError(f'Unknown model {arch!r}; see `mednext-zoo list`.')
    dataset = args.dataset
    if dataset is None and name in PRETRAINED_TAGS:
        dataset = PRETRAINED_TAGS[name]['dataset']
    num_classes = args.num_classes
    if num_classes is None and dataset in DATASETS:
        num_classes = len(DATASETS[dataset]['label_names'])
    kwargs = {k: v for k, v in dict(num_classes=num_classes, in_chans=args.in_chans, img_size=args.img_size).items()
              if v is not None}
    # Export what the checkpoint holds, unadapted: the cfg overlay declares the model's own head and input
    # so timm neither drops the classifier nor converts the first conv; a mismatch raises with the keys.
    state_dict = load_state_dict(args.checkpoint, allow_pickle=args.allow_pickle)
    probe = timm.create_model(name, pretrained=False, **kwargs)
    overlay = dict(state_dict=state_dict, num_classes=probe.num_classes, input_size=(probe.in_chans, *probe.img_size))
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    return model, dataset


def _run_push(args: argparse.Namespace) -> int:
    from ..hub import push_to_hub

    result = push_to_hub(args.save_dir, args.repo_id, private=args.private, revision=args.revision,
                         commit_message=args.message, create_pr=args.create_pr, dry_run=args.dry_run)
    if not args.dry_run:
        print(f'Uploaded: {result}')
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser('list', help='list models, pretrained tags and the real status of their weights',
                              description='Every pretrained tag (MODEL.TAG) with its dataset, the real publication '
                                          'status of its weights and its Hugging Face Hub id.')
    p.add_argument('--json', action='store_true', help='print the rows as JSON')
    p.add_argument('--capabilities', action='store_true',
                   help='print the capability matrix (features_only, in_chans, sizes, TorchScript, ONNX, compile, '
                        'grad checkpointing, smp encoder) of every model, as generated by its checks')
    p.add_argument('--check', action='store_true',
                   help='with --capabilities: re-run the checks on this machine instead of printing the committed '
                        'matrix (a minute or more per model on a CPU)')
    p.set_defaults(func=_run_list)

    p = subparsers.add_parser(
        'export', help='write a Hub folder (default), or a deployable ONNX / OpenVINO artefact (--format)',
        description='Build MODEL, load --checkpoint into it (safetensors, or .pth/.bin with weights_only=True), '
                    'and write the folder timm reads with local-dir: / hf-hub: (classifiers also load in '
                    'Hugging Face transformers), with a model card. --fix-config FOLDER instead repairs the '
                    'config.json of a folder written by an older version so that transformers loads it. '
                    '--format onnx / openvino writes a deployable model (fp32, or int8 with --int8 --calibration '
                    'DIR) with preprocessing.json (the training recipe) beside it, and prints its parity with '
                    'PyTorch: on sample images, and on raw files taken through preprocessing.json against the '
                    'training-time loader. MODEL may be a fine-tuning run folder or its export/: everything '
                    '(weights, labels, evaluation resize, preprocessing) then comes from the run.')
    p.add_argument('model', nargs='?', help='a fine-tuning run folder (or its export/): re-exported with its '
                                            'weights, labels and preprocessing; a Hub folder (--format onnx / '
                                            'openvino); or an architecture / arch.tag, e.g. mednext_base.sarscov2_ct, '
                                            'with --checkpoint')
    p.add_argument('out_dir', nargs='?', help='output folder')
    p.add_argument('--checkpoint', help='trained weights to export (.safetensors, .pth, .bin); required with an '
                                        'architecture as MODEL')
    p.add_argument('--labels', help='class names in output order, comma-separated, for a bare checkpoint (a run '
                                    'records its own)')
    p.add_argument('--preprocessing', metavar='FILE',
                   help='the input recipe a bare checkpoint was trained with: a JSON file holding one (a run\'s '
                        'export/config.json or segmentation.json, an artefact\'s preprocessing.json) or a folder '
                        'holding such a file; a run records its own')
    p.add_argument('--fix-config', metavar='FOLDER',
                   help='rewrite FOLDER/config.json in place for transformers (idempotent; the old config is kept '
                        'in FOLDER/config_fixes.json); no other arguments')
    p.add_argument('--allow-pickle', action='store_true',
                   help='allow a pickle checkpoint that weights_only loading refuses (only for trusted files)')
    p.add_argument('--dataset', help='training dataset key (sarscov2_ct, monkeypox_msld, covid_ct_large, synapse, '
                                     'acdc); default: the tag\'s')
    p.add_argument('--num-classes', type=int, help="classifier size (default: the dataset's classes)")
    p.add_argument('--in-chans', type=int, help="input channels (default: the model's own)")
    p.add_argument('--img-size', type=int, help="input size in pixels (default: the model's own)")
    p.add_argument('--metrics', help='JSON file {"metric": value | {"value": v, "ci": [lo, hi]}}')
    p.add_argument('--split', help='split details for the card (ratio, seed, split file)')
    p.add_argument('--training', help='training details for the card')
    p.add_argument('--repo-id', help='Hub repo the card points to (default <org>/<arch>.<tag>)')
    p.add_argument('--no-flops', action='store_true', help='skip the fvcore FLOP count')
    p.add_argument('--seed-cache', action='store_true', help='also place the folder in the local Hugging Face cache')
    d = p.add_argument_group('deployable artefact (--format onnx / openvino; see docs/deploy.md)')
    d.add_argument('--format', choices=('hub', 'onnx', 'openvino'), default='hub',
                   help='hub: a Hub folder (default); onnx: model.onnx (ONNX Runtime); openvino: model.xml + .bin')
    d.add_argument('--int8', action='store_true',
                   help="int8 post-training quantisation by the backend's own tool (onnxruntime static QDQ / NNCF); "
                        'needs --calibration')
    d.add_argument('--calibration', metavar='DIR',
                   help='folder of calibration images (PNG / JPEG / DICOM / NIfTI) like the deployment inputs')
    d.add_argument('--calibration-limit', type=int, default=64,
                   help='at most this many calibration images (a seeded choice; default 64)')
    d.add_argument('--window', help='for a classifier checkpoint without a recorded recipe: the window its '
                                    'DICOM / NIfTI inputs were read with (a CT preset, "LEVEL,WIDTH" in HU, "file" '
                                    'or "minmax"); the rest of the recipe is the package\'s (whole image, '
                                    'bilinear, the model\'s size and mean / std). A run records its own')
    d.add_argument('--sample', action='append', metavar='FILE',
                   help='a raw file (DICOM / NIfTI / PNG ...) for the preprocessing parity check, besides the '
                        'packaged ones (repeatable)')
    p.set_defaults(func=_run_export)

    p = subparsers.add_parser('push', help='upload an exported folder to the Hugging Face Hub',
                              description='Upload a folder written by `mednext-zoo export` / save_pretrained to '
                                          'a Hugging Face Hub repo (needs a login token; --dry-run uploads nothing).')
    p.add_argument('save_dir', help='folder written by `mednext-zoo export` / save_pretrained')
    p.add_argument('repo_id', help='owner/name, e.g. mednext-zoo/mednext_base.sarscov2_ct')
    p.add_argument('--dry-run', action='store_true', help='print what would be uploaded and upload nothing')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--revision', help='branch to push to (default main)')
    p.add_argument('--message', help='commit message')
    p.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    p.set_defaults(func=_run_push)
