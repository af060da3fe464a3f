"""Save, cache, list and upload mednext-zoo checkpoints in the layout timm reads."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import safetensors.torch
import timm
import torch
import torch.nn as nn
from timm.data import resolve_model_data_config
from timm.models import get_pretrained_cfg
from timm.models._hub import save_config_for_hf

from .. import models  # noqa: F401  (registers the architectures)
from .._atomic import atomic_path, atomic_write_text
from ..catalog import DATASETS, HF_HUB_ORG, PRETRAINED_TAGS, hub_id, weight_status
from ..data.preprocessing import PreprocessingSpec, as_spec
from ..errors import UserInputError
from ._io import PathLike, sha256_file
from .card import render_model_card

__all__ = [
    'save_pretrained', 'seed_hf_cache', 'push_to_hub', 'list_pretrained', 'count_params_flops', 'HUB_FILES',
    'fix_config', 'config_problems', 'LOADER_ARGS', 'FIX_RECORD_NAME',
]

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
CARD_NAME = 'README.md'
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
"""The files a mednext-zoo Hub repo holds (no pickle files are ever uploaded)."""

FIX_RECORD_NAME = 'config_fixes.json'
"""Written beside ``config.json`` by :func:`fix_config`: what it changed and the config before (never uploaded)."""

LOADER_ARGS = ('pretrained', 'num_classes')
"""Keyword arguments a loader passes to ``timm.create_model`` itself, so ``config.json``'s ``model_args`` must not.

transformers' TimmWrapper (4.53 - 5.x, ``modeling_timm_wrapper.py``) calls
``timm.create_model(config.architecture, pretrained=False, num_classes=config.num_labels, **config.model_args)``
(``num_classes=0`` in ``TimmWrapperModel``): a repeated key fails with "got multiple values for keyword argument".
timm (``hf-hub:`` / ``local-dir:``) only fills in what the caller did not pass, and reads the class count from the
root ``num_classes``, so neither loader needs these in ``model_args``. ``img_size`` / ``in_chans`` stay there: no
loader passes them, and both rebuild the saved input from them.
"""

# pretrained_cfg fields that describe the training data; dropped when saving without a dataset
_DATASET_FIELDS = ('label_names', 'label_descriptions', 'license', 'origin_url', 'description', 'notes', 'tag')


def count_params_flops(
        model: nn.Module,
        input_size: Sequence[int],
        flops: bool = True,
) -> Tuple[int, Optional[float], List[str]]:
    """Learnable parameters, fvcore GFLOPs (multiply-adds, batch 1) and the op kinds fvcore skipped."""
    num_params = sum(p.numel() for p in model.parameters())  # frozen or not: the architecture's size
    if not flops:
        return num_params, None, []
    with warnings.catch_warnings():  # fvcore scripts a loss at import; torch warns that jit.script is deprecated
        warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    p = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=p.device if p is not None else 'cpu',
                    dtype=p.dtype if p is not None else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            analysis = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = analysis.total()
            skipped = sorted(str(k) for k in analysis.unsupported_ops())
    finally:
        model.train(was_training)
    return num_params, total / 1e9, skipped


def _arch_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    arch = cfg.get('architecture')
    if not arch:
        raise UserInputError(
            'The model has no pretrained_cfg["architecture"]: create it with timm.create_model("mednext_...") '
            '(after import mednext_zoo) so that the saved config names the architecture to rebuild.'
        )
    return arch


def _resolve_dataset(
        dataset: Union[str, Mapping[str, Any], None],
        arch: str,
) -> Tuple[Optional[str], Dict[str, Any]]:
    """(registry key or None, dataset facts) for a ``DATASETS`` key, an ``arch.tag`` or a custom mapping."""
    if dataset is None:
        return None, {}
    if isinstance(dataset, Mapping):
        if not dataset.get('name'):
            raise UserInputError('A custom dataset description needs at least a "name" (see DATASETS for the keys).')
        return None, dict(dataset)
    key = dataset.split('.', 1)[1] if dataset.startswith(arch + '.') else dataset
    if key not in DATASETS:
        raise UserInputError(
            f'Unknown dataset {dataset!r}; choose one of {", ".join(DATASETS)}, describe your own as a dict '
            f'(name, url, license, modality, size, split, protocol, metric_conventions, ...), or pass None.'
        )
    return key, dict(DATASETS[key])


def save_pretrained(
        model: nn.Module,
        save_dir: PathLike,
        *,
        dataset: Union[str, Mapping[str, Any], None] = None,
        metrics: Optional[Mapping[str, Any]] = None,
        metrics_note: Optional[str] = None,
        split: Optional[str] = None,
        training: Optional[str] = None,
        label_names: Optional[Sequence[str]] = None,
        repo_id: Optional[str] = None,
        flops: bool = True,
        sections: Sequence[Tuple[str, str]] = (),
        preprocessing: Union[PreprocessingSpec, Mapping[str, Any], None] = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card to ``save_dir``.

    This is the layout timm reads with ``timm.create_model("local-dir:<save_dir>", pretrained=True)``
    and, once uploaded (:func:`push_to_hub`), with ``"hf-hub:<repo_id>"`` or the registry tag. A classifier's
    folder also loads in Hugging Face transformers (``AutoModelForImageClassification``, ``pipeline``) after
    ``import mednext_zoo``: ``config.json`` keeps :data:`LOADER_ARGS` out of ``model_args`` and the label names
    at its root, where both libraries read them. Segmentation networks are timm-only.

    Args:
        model: A mednext-zoo model made by ``timm.create_model`` (any in_chans / num_classes / img_size).
        save_dir: Output folder (created; existing files of the same names are replaced atomically).
        dataset: The training dataset: a key of ``DATASETS`` (``'sarscov2_ct'``, ...), ``'arch.tag'``, or a
            dict describing your own data with the same keys (``name`` required; ``url``, ``license``,
            ``modality``, ``size``, ``split``, ``protocol``, ``metric_conventions``, ``label_names``, ...).
            Sets labels, input spec, licence, split and protocol text of the card. ``None``: not recorded.
        metrics: Test metrics, ``{'accuracy': 0.98, 'auc': {'value': 0.99, 'ci': (0.98, 1.0)}, ...}``;
            the card prints them with the dataset's metric conventions.
        metrics_note: Extra sentence on how the metrics were computed (e.g. the protocol name).
        split: Extra split details (ratio, seed, split file) appended to the dataset's split text.
        training: Extra training details appended to the dataset's protocol text.
        label_names: Class names in output order; default: the dataset's.
        repo_id: Hub repo the card's loading lines use; default ``'<HF_HUB_ORG>/<arch>.<tag>'`` for a paper
            dataset, else none (the card then loads with ``local-dir:``).
        flops: Count FLOPs with fvcore for the card (a few seconds on CPU for a base model).
        sections: Extra ``(title, markdown)`` card sections after the evaluation (e.g. a reproduction record).
        preprocessing: The input recipe the model was trained with
            (:class:`~mednext_zoo.data.preprocessing.PreprocessingSpec` or its JSON form), written to
            ``config.json`` under ``preprocessing``; ``mednext-zoo export --format onnx|openvino`` and
            ``mednext_zoo.deploy.preprocess`` read it from there. Its mean / std (and, for a classifier, the
            whole-image bilinear resize) also set ``pretrained_cfg`` so that timm's and transformers' transforms
            agree with it. ``None``: not recorded (exporting the folder for deployment then needs it explicitly).

    Returns:
        The folder path.
    """
    arch = _arch_name(model)
    ds_key, ds = _resolve_dataset(dataset, arch)
    num_classes = getattr(model, 'num_classes', None)
    if label_names is None and ds.get('label_names'):
        label_names = ds['label_names']
    if label_names is not None and num_classes is not None and len(label_names) != num_classes:
        raise UserInputError(
            f'{len(label_names)} label names ({", ".join(label_names)}) for a model with {num_classes} outputs: '
            f'pass label_names=... matching the head, or build the model with num_classes={len(label_names)}.'
        )
    if repo_id is None and ds_key:
        repo_id = hub_id(arch, ds_key)
    spec = _check_preprocessing(model, preprocessing)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)

    # config.json: timm's own writer, then the dataset fields are set (or cleared) explicitly so that a
    # model fine-tuned on other data never inherits the labels / licence of the tag it started from.
    img_size = tuple(getattr(model, 'img_size', ()) or ())
    in_chans = getattr(model, 'in_chans', None)
    with atomic_path(save_dir / CONFIG_NAME) as tmp:
        save_config_for_hf(model, os.fspath(tmp))
        config = json.loads(tmp.read_text())
        pcfg = config['pretrained_cfg']
        for k in _DATASET_FIELDS:
            pcfg.pop(k, None)
        config.pop('label_names', None)
        config.pop('label_descriptions', None)
        model_args = config.setdefault('model_args', {})
        for k in LOADER_ARGS:
            model_args.pop(k, None)
        if img_size:
            model_args['img_size'] = list(img_size)
        if in_chans is not None:
            model_args['in_chans'] = in_chans
        if num_classes is not None:
            config['num_classes'] = num_classes  # the one place timm and transformers both read the head size
        if img_size and in_chans is not None:
            pcfg['input_size'] = [in_chans, *img_size]
        if ds:
            pcfg.update({k: v for k, v in dict(
                tag=ds_key,
                license=ds.get('license'),
                origin_url=ds.get('url'),
                description=f'{arch} trained on {ds["name"]}.',
            ).items() if v})
            if ds.get('label_descriptions') and label_names is not None:
                config['label_descriptions'] = {n: ds['label_descriptions'][n]
                                                for n in label_names if n in ds['label_descriptions']}
        if label_names is not None:
            config['label_names'] = list(label_names)
        config.pop('preprocessing', None)
        if spec is not None:
            pcfg.update(mean=list(spec.mean), std=list(spec.std))
            if spec.task == 'classification':  # the whole image, bilinear: timm's / transformers' transform agrees
                pcfg.update(crop_pct=1.0, crop_mode='squash', interpolation='bilinear')
            config['preprocessing'] = spec.to_dict()
        tmp.write_text(json.dumps(config, indent=2) + '\n')

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(save_dir / WEIGHTS_NAME) as tmp:
        safetensors.torch.save_file(tensors, os.fspath(tmp), metadata={'format': 'pt'})

    data_cfg = resolve_model_data_config(model)
    input_size = (in_chans, *img_size) if img_size and in_chans else tuple(data_cfg['input_size'])
    num_params, gflops, skipped = count_params_flops(model, input_size, flops=flops)
    card = render_model_card(
        arch=arch,
        repo_id=repo_id,
        task=ds.get('task') or ('segmentation' if arch.startswith('medunext') else 'classification'),
        input_size=input_size,
        mean=data_cfg['mean'],
        std=data_cfg['std'],
        interpolation=data_cfg.get('interpolation', 'bicubic'),
        label_names=label_names,
        num_params=num_params,
        gflops=gflops,
        flops_skipped=skipped,
        dataset=ds,
        dataset_tag=ds_key,
        metrics=metrics,
        metrics_note=metrics_note,
        split=split,
        training=training,
        published=bool(repo_id) and weight_status(repo_id.split('/')[-1]) == 'published',
        sections=tuple(sections) + ((('Preprocessing', _preprocessing_section(spec)),) if spec else ()),
    )
    atomic_write_text(save_dir / CARD_NAME, card)
    return save_dir


def _preprocessing_section(spec: PreprocessingSpec) -> str:
    return (f'{spec.summary()}.\n\nThe full recipe is `preprocessing` in `config.json`; '
            '`mednext_zoo.deploy.preprocess(path, folder)` applies it to a file (numpy, no torch), and '
            '`mednext-zoo export FOLDER OUT --format onnx` carries it into the deployable artefact.')


def _check_preprocessing(model: nn.Module, preprocessing: Union[PreprocessingSpec, Mapping[str, Any], None]
                         ) -> Optional[PreprocessingSpec]:
    """The description as a spec, refused when it contradicts the model's input channels or fixed input size."""
    if preprocessing is None:
        return None
    spec = as_spec(preprocessing)
    in_chans = getattr(model, 'in_chans', None)
    if in_chans is not None and int(in_chans) != spec.in_chans:
        raise UserInputError(f'The preprocessing gives {spec.in_chans} input channel(s) but the model takes '
                             f'{in_chans}: pass the description the model was trained with.')
    img_size = getattr(model, 'img_size', None)
    if img_size is not None and spec.spatial['mode'] == 'resize':
        size = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(v) for v in img_size)
        if tuple(spec.input_size[1:]) != size:
            raise UserInputError(f'The preprocessing feeds {spec.input_size[1]}x{spec.input_size[2]} inputs but the '
                                 f'model was built for {size[0]}x{size[1]}: pass the description the model was '
                                 f'trained with (or build the model at that size).')
    return spec


def _commit_hash_for(files: Sequence[Path]) -> str:
    """A 40-hex revision id derived from the files' contents (stands in for a Hub commit hash)."""
    h = hashlib.sha1()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def seed_hf_cache(
        save_dir: PathLike,
        repo_id: str,
        *,
        cache_dir: Optional[PathLike] = None,
        revision: str = 'main',
) -> Path:
    """Place a saved folder into a Hugging Face cache so that ``HF_HUB_OFFLINE=1`` loading finds it.

    Uses the cache layout huggingface_hub itself writes and reads
    (``models--<org>--<name>/{blobs/<sha256>, snapshots/<commit>/<file>, refs/<revision>}``); use it
    to carry weights onto an offline machine, or to pre-seed a shared cache on a cluster.

    Returns:
        The snapshot folder.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    save_dir = Path(save_dir)
    files = [save_dir / n for n in HUB_FILES if (save_dir / n).is_file()]
    if not (save_dir / CONFIG_NAME).is_file() or not (save_dir / WEIGHTS_NAME).is_file():
        raise UserInputError(f'{save_dir} needs {CONFIG_NAME} and {WEIGHTS_NAME} (write it with save_pretrained).')
    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type='model')
    commit = _commit_hash_for(files)
    snapshot = storage / 'snapshots' / commit
    (storage / 'blobs').mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in files:
        blob = storage / 'blobs' / sha256_file(f)
        if not blob.exists():
            with atomic_path(blob) as tmp:
                shutil.copyfile(f, tmp)
        link = snapshot / f.name
        if link.exists() or link.is_symlink():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, snapshot))
        except OSError:  # no symlinks (e.g. Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, link)
    (storage / 'refs').mkdir(exist_ok=True)
    atomic_write_text(storage / 'refs' / revision, commit)
    return snapshot


def _read_config(save_dir: Path) -> Dict[str, Any]:
    path = save_dir / CONFIG_NAME
    if not path.is_file():
        raise UserInputError(f'{path} does not exist: pass a folder written by save_pretrained / `mednext-zoo export`.')
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserInputError(f'{path} is not valid JSON ({e}).') from e
    if not isinstance(config, dict) or 'architecture' not in config or 'pretrained_cfg' not in config:
        raise UserInputError(f'{path} is not a timm Hub config (it needs "architecture" and "pretrained_cfg").')
    return config


def _fixed_config(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """(the config transformers loads, one line per change); timm builds the same model from either."""
    fixed = json.loads(json.dumps(config))  # a deep copy in JSON types
    changes = []
    model_args = fixed.get('model_args') or {}
    for k in LOADER_ARGS:
        if k not in model_args:
            continue
        value = model_args.pop(k)
        if k == 'num_classes':
            root = fixed.get('num_classes')
            if root is None:
                fixed['num_classes'] = value
                changes.append(f'moved model_args.num_classes ({value}) to the root "num_classes"')
                continue
            if root != value:
                raise UserInputError(
                    f'config.json says num_classes={root} but model_args.num_classes={value}: the folder is '
                    f'inconsistent; export it again from the checkpoint with `mednext-zoo export`.')
        changes.append(f'removed model_args.{k} ({value!r}): transformers passes it to timm.create_model itself')
    labels = fixed.get('label_names')
    cfg_labels = fixed['pretrained_cfg'].get('label_names')
    if labels is None and cfg_labels is not None:
        fixed['label_names'] = list(cfg_labels)
        changes.append('copied pretrained_cfg.label_names to the root "label_names" (where transformers reads them)')
    return fixed, changes


def config_problems(save_dir: PathLike) -> List[str]:
    """What :func:`fix_config` would change in ``save_dir/config.json`` (empty: nothing to fix)."""
    return _fixed_config(_read_config(Path(save_dir)))[1]


def fix_config(save_dir: PathLike) -> List[str]:
    """Rewrite an older ``config.json`` so that transformers loads the folder too; timm loads it as before.

    Folders written before mednext-zoo recorded :data:`LOADER_ARGS` outside ``model_args`` fail in
    ``AutoModelForImageClassification.from_pretrained`` with "got multiple values for keyword argument
    'num_classes'". The fix moves or drops those keys and puts the label names where transformers reads them;
    the weights and everything else stay as they are. Idempotent: an up-to-date config is left untouched.
    The config before each fix and the list of changes are appended to ``FIX_RECORD_NAME`` beside it (written
    first, atomically; then ``config.json`` is replaced atomically), so a fix can always be undone.

    Returns:
        One line per change (empty when there was nothing to fix).
    """
    from ..version import __version__

    save_dir = Path(save_dir)
    config = _read_config(save_dir)
    fixed, changes = _fixed_config(config)
    if not changes:
        return []
    if (save_dir / CONFIG_NAME).is_symlink():  # a Hugging Face cache snapshot links into content-addressed blobs
        raise UserInputError(
            f'{save_dir / CONFIG_NAME} is a link (a Hugging Face cache snapshot?): fix the exported folder instead, '
            f'then place it in the cache again with seed_hf_cache / `mednext-zoo export ... --seed-cache`.')
    record_path = save_dir / FIX_RECORD_NAME
    records = []
    if record_path.is_file():
        try:
            records = json.loads(record_path.read_text())
        except json.JSONDecodeError as e:
            raise UserInputError(f'{record_path} is not valid JSON ({e}); move it away and run again.') from e
    records.append({'tool': f'mednext-zoo {__version__}', 'changes': changes,
                    'config_sha256_before': sha256_file(save_dir / CONFIG_NAME), 'config_before': config})
    atomic_write_text(record_path, json.dumps(records, indent=2) + '\n')
    atomic_write_text(save_dir / CONFIG_NAME, json.dumps(fixed, indent=2) + '\n')
    return changes


def list_pretrained() -> List[Dict[str, Any]]:
    """One row per pretrained tag (and per architecture without weights) with its real status."""
    rows = []
    tagged = set()
    for name, entry in PRETRAINED_TAGS.items():
        arch, tag = name.split('.', 1)
        ds = DATASETS[entry['dataset']]
        registered = timm.is_model(arch)
        tagged.add(arch)
        rows.append(dict(
            model=arch, tag=tag, name=name, hub_id=hub_id(arch, tag), dataset=ds['name'], task=ds['task'],
            status=entry['status'] if registered else f'{entry["status"]} (architecture not in this build)',
            revision=entry.get('revision'), registered=registered,
        ))
    for arch in timm.list_models(['mednext*', 'medunext*']):
        if arch not in tagged:
            rows.append(dict(model=arch, tag='', name=arch, hub_id='', dataset='', task='',
                             status='no weights (architecture only)', revision=None, registered=True))
    for r in rows:  # the tag `timm.create_model(arch, pretrained=True)` loads
        cfg = get_pretrained_cfg(r['model']) if r['registered'] and r['tag'] else None
        r['default'] = bool(cfg is not None and cfg.tag == r['tag'])
    return sorted(rows, key=lambda r: r['model'])  # stable: registry order within a model


def _validate_folder(save_dir: Path) -> Tuple[Dict[str, Any], nn.Module]:
    missing = [n for n in HUB_FILES if not (save_dir / n).is_file()]
    if missing:
        raise UserInputError(
            f'{save_dir} lacks {", ".join(missing)}: write the folder with mednext_zoo.hub.save_pretrained '
            f'(or `mednext-zoo export`) before pushing.'
        )
    config = _read_config(save_dir)
    arch = config.get('architecture')
    if not arch or not timm.is_model(arch):
        raise UserInputError(f'{save_dir / CONFIG_NAME} names architecture {arch!r}, not a registered model.')
    problems = _fixed_config(config)[1]
    if problems:
        raise UserInputError(
            f'{save_dir / CONFIG_NAME} predates transformers support ({"; ".join(problems)}): run '
            f'`mednext-zoo export --fix-config {save_dir}` (or mednext_zoo.hub.fix_config) before pushing.'
        )
    model = timm.create_model(f'local-dir:{save_dir}', pretrained=True)  # the same path users take
    return config, model


def push_to_hub(
        save_dir: PathLike,
        repo_id: str,
        *,
        token: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: Optional[str] = None,
        create_pr: bool = False,
        dry_run: bool = False,
) -> Union[List[Dict[str, Any]], str]:
    """Upload a :func:`save_pretrained` folder (config.json, model.safetensors, README.md) to the Hub.

    The folder is first loaded back through ``timm.create_model("local-dir:...", pretrained=True)``
    so that a broken upload is caught before it leaves the machine. Only the three files above are
    uploaded, never a pickle checkpoint. Repos under ``HF_HUB_ORG`` must be named ``<arch>.<tag>``.

    Args:
        dry_run: Print what would be uploaded (files, sizes, sha256, target) and upload nothing.

    Returns:
        Dry run: the planned files (name, bytes, sha256). Otherwise: the commit URL.
    """
    save_dir = Path(save_dir)
    if '/' not in repo_id or repo_id.count('/') != 1:
        raise UserInputError(f'repo_id must be "owner/name", got {repo_id!r}.')
    config, model = _validate_folder(save_dir)
    arch = config['architecture']
    org, name = repo_id.split('/')
    if org == HF_HUB_ORG and not name.startswith(arch + '.'):
        raise UserInputError(
            f'Repos under {HF_HUB_ORG} are named <arch>.<tag>: the folder holds {arch}, so use '
            f'{HF_HUB_ORG}/{arch}.<tag> rather than {repo_id}.'
        )
    plan = [dict(file=n, bytes=(save_dir / n).stat().st_size, sha256=sha256_file(save_dir / n)) for n in HUB_FILES]
    if dry_run:
        print(f'Dry run: would upload to https://huggingface.co/{repo_id} (model repo, '
              f'{"private" if private else "public"}, revision {revision or "main"}'
              f'{", as a pull request" if create_pr else ""}):')
        for p in plan:
            print(f'  {p["file"]:<18} {p["bytes"]:>12,d} bytes  sha256 {p["sha256"]}')
        print(f'Checked: timm.create_model("local-dir:{save_dir}", pretrained=True) loads {arch} with '
              f'{model.num_classes} outputs, input {tuple(model.pretrained_cfg["input_size"])}.')
        print('Nothing was uploaded (dry run).')
        return plan

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=os.fspath(save_dir),
        repo_id=repo_id,
        repo_type='model',
        revision=revision,
        allow_patterns=list(HUB_FILES),
        commit_message=commit_message or f'Upload {arch} weights with mednext-zoo',
        create_pr=create_pr,
    )
    return str(getattr(info, 'commit_url', info))
