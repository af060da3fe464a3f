"""The guarded pretrained-weight loader used by every mednext-zoo entry point.

The facts it reads (``HF_HUB_ORG``, ``DATASETS``, ``PRETRAINED_TAGS``, :func:`hub_id`, :func:`weight_status`)
live in :mod:`mednext_zoo.catalog` and are re-exported here for older imports.

* :func:`pretrained_cfg_kwargs`: the dataset-specific pretrained_cfg fields of an ``arch.tag``.
* :func:`build_model_with_pretrained`: a drop-in for timm's ``build_model_with_cfg`` that keeps
  timm's loading (tags, ``hf-hub:``, ``local-dir:``, ``pretrained_cfg_overlay=dict(file=...)``,
  in_chans / num_classes adaptation) but never lets ``pretrained=True`` end in random weights or
  an opaque stack trace: missing weights, pickle-only checkpoints and checkpoints of another
  architecture raise :class:`~mednext_zoo.errors.UserInputError` subclasses that say what to do
  (defined in :mod:`mednext_zoo.errors`).

The hub layer (``mednext_zoo.hub``) builds on this; nothing here imports it.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg

from ..catalog import (
    DATASETS,
    HF_HUB_ORG,
    LICENSE_NOTE,
    PAPER_CITATION,
    PAPER_DOI,
    PRETRAINED_TAGS,
    hub_id,
    weight_status,
)
from ..errors import (
    PickleCheckpointError,
    PretrainedMismatchError,
    PretrainedWeightsNotFoundError,
    UserInputError,
)

__all__ = [
    'HF_HUB_ORG', 'DATASETS', 'PRETRAINED_TAGS', 'PAPER_CITATION', 'PAPER_DOI',
    'hub_id', 'pretrained_cfg_kwargs', 'weight_status', 'build_model_with_pretrained', 'check_state_dict',
    'PretrainedWeightsNotFoundError', 'PretrainedMismatchError', 'PickleCheckpointError',
]


def pretrained_cfg_kwargs(name: str) -> Dict[str, Any]:
    """The dataset-specific pretrained_cfg fields of ``arch.tag`` (merge into the architecture's ``_cfg``)."""
    arch, tag = name.split('.', 1)
    ds = DATASETS[PRETRAINED_TAGS[name]['dataset']]
    return dict(
        hf_hub_id=hub_id(arch, tag),
        num_classes=len(ds['label_names']),
        label_names=tuple(ds['label_names']),
        label_descriptions=dict(ds['label_descriptions']) or None,
        input_size=(ds['in_chans'], ds['img_size'], ds['img_size']),
        mean=tuple(ds['mean']),
        std=tuple(ds['std']),
        crop_pct=1.0,  # the whole slice / photograph is resized to the input size, never centre-cropped
        crop_mode='squash',  # (for a non-square image too: 'center' would resize the short side and crop the long)
        license=ds['license'],
        origin_url=ds['url'],
        description=f'{arch} trained on {ds["name"]} ({ds["task"]}).',
        notes=(LICENSE_NOTE,),
    )


def _offline_ways(name: str, repo: Optional[str]) -> str:
    if repo is None and name in PRETRAINED_TAGS:
        repo = hub_id(*name.split('.', 1))
    repo = repo or 'ORG/REPO'
    load = f'timm.create_model("{name}", pretrained=True)' if name in PRETRAINED_TAGS \
        else f'timm.create_model("hf-hub:{repo}", pretrained=True)'
    return (
        'Supply the weights in one of three offline ways:\n'
        f'  1. A Hugging Face cache: on a connected machine run `hf download {repo} --cache-dir DIR`, copy DIR '
        f'here, set HF_HUB_CACHE=DIR and HF_HUB_OFFLINE=1, then {load} (a cache can also be seeded from a '
        f'saved folder with mednext_zoo.hub.seed_hf_cache(folder, "{repo}")).\n'
        '  2. A local directory holding config.json + model.safetensors (as written by '
        'mednext_zoo.hub.save_pretrained): timm.create_model("local-dir:/path/to/dir", pretrained=True).\n'
        f'  3. A weights file: timm.create_model("{name}", pretrained=True, '
        'pretrained_cfg_overlay=dict(file="/path/to/model.safetensors")).\n'
        'Or pass pretrained=False for random initialisation.'
    )


def _describe_source(cfg: Dict[str, Any], cache_dir: Optional[str]) -> Tuple[str, Optional[str]]:
    """Human description of where timm looks for ``cfg``'s weights, and the Hub repo id if any."""
    load_from, loc = _resolve_pretrained_source(cfg)
    if load_from == 'hf-hub':
        from huggingface_hub import constants
        repo = loc[0] if isinstance(loc, (tuple, list)) else loc
        repo_id, _, revision = repo.partition('@')
        files = loc[1] if isinstance(loc, (tuple, list)) else 'model.safetensors, then pytorch_model.bin'
        cache = os.fspath(cache_dir or constants.HF_HUB_CACHE)
        offline = 'HF_HUB_OFFLINE=1, no network access attempted' if constants.HF_HUB_OFFLINE else 'online'
        where = (f"Hugging Face Hub repo '{repo_id}' (revision {revision or 'main'}), files {files}; "
                 f'cache searched: {cache} ({offline})')
        return where, repo
    if load_from == 'local-dir':
        return f'local directory {loc} (model.safetensors, pytorch_model.bin, *.pth)', None
    if load_from == 'file':
        return f'file {loc}', None
    if load_from == 'url':
        return f'url {loc}', None
    return 'nowhere: this model has no pretrained weight source configured', None


_NOT_FOUND_MESSAGES = ('No pretrained weights exist', 'No suitable checkpoints found', 'Specified path is not a')


def _is_not_found(e: BaseException) -> bool:
    from huggingface_hub.errors import EntryNotFoundError
    if isinstance(e, (OSError, EntryNotFoundError)):  # FileNotFoundError, hub HTTP / offline / repo errors
        return True
    return isinstance(e, RuntimeError) and str(e).startswith(_NOT_FOUND_MESSAGES)


def _cause(e: BaseException) -> str:
    """``Type: message`` with every line of the message (continuation lines indented)."""
    text = str(e).strip() or '(no message)'
    return f'{type(e).__name__}: ' + text.replace('\n', '\n    ')


def _hub_unreachable(timeout: float = 5.0) -> Optional[str]:
    """Why the Hugging Face Hub cannot answer now (offline mode, no route, timeout), or None when it can.

    One plain HEAD request with a short timeout and no retries (huggingface_hub's own downloads retry with
    back-off for about a minute per file when the network is down).
    """
    from huggingface_hub import constants, get_session
    if constants.HF_HUB_OFFLINE:
        return 'HF_HUB_OFFLINE=1 is set'
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # noqa: BLE001 -- any failure to connect means "cannot answer"
        return f'{constants.ENDPOINT} cannot be reached ({_cause(e)})'
    return None


def _cached_hub_file(repo_id: str, revision: Optional[str], cache_dir: Optional[str]) -> Optional[str]:
    """A weights file of ``repo_id`` already in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    for fname in ('model.safetensors', 'pytorch_model.bin'):
        hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir, revision=revision)
        if isinstance(hit, str):
            return hit
    return None


def _fail_fast_unpublished(name: str, cfg: Dict[str, Any], cache_dir: Optional[str], where: str,
                           repo: Optional[str]) -> None:
    """Raise at once for a tag known to be unpublished when no cached copy exists and the Hub cannot answer.

    With a cached copy, or a Hub that answers (the weights may have been published since this release), timm's
    normal loading runs.
    """
    if name not in PRETRAINED_TAGS or weight_status(name) == 'published' or repo is None:
        return
    load_from, _ = _resolve_pretrained_source(cfg)
    if load_from != 'hf-hub':
        return
    repo_id, _, revision = repo.partition('@')
    if _cached_hub_file(repo_id, revision or None, cache_dir) is not None:
        return
    why = _hub_unreachable()
    if why is None:
        return
    raise PretrainedWeightsNotFoundError(
        f'pretrained=True but no weights were found for {name}.\n'
        f'Weight status of {name}: {weight_status(name)} (see `mednext-zoo list`), no copy is in the local '
        f'cache, and the Hub cannot answer: {why}.\n'
        f'Looked in: {where}.\n'
        + _offline_ways(name, repo)
    )


def _is_pickle_refusal(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and 'weights_only=True' in str(e)


def check_state_dict(
        state_dict: Dict[str, Any],
        model: nn.Module,
        pretrained_cfg: Optional[Dict[str, Any]] = None,
        source: str = 'the checkpoint',
) -> None:
    """Raise :class:`PretrainedMismatchError` listing the keys where ``state_dict`` does not fit ``model``.

    Allowed differences are the ones timm adapts on load: the classifier when ``model.num_classes``
    differs from the cfg's, and the first conv's input channels when ``model.in_chans`` differs
    from the cfg's ``input_size[0]`` (1 <-> 3 channels).
    """
    cfg = pretrained_cfg or getattr(model, 'pretrained_cfg', None) or {}
    target = model.state_dict()
    skip = set()
    classifiers = cfg.get('classifier') or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    if cfg.get('num_classes') is not None and getattr(model, 'num_classes', None) != cfg['num_classes']:
        skip |= {f'{c}.{p}' for c in classifiers for p in ('weight', 'bias')}
    first_convs = cfg.get('first_conv') or ()
    first_convs = {f'{c}.weight' for c in ((first_convs,) if isinstance(first_convs, str) else first_convs)}
    cfg_in_chans = (cfg.get('input_size') or (3,))[0]

    missing = [k for k in target if k not in state_dict and k not in skip]
    unexpected = [k for k in state_dict if k not in target and k not in skip]
    shapes = []
    for k in target:  # model order: the first mismatching layers are listed first
        v = state_dict.get(k)
        if v is None or k in skip or not isinstance(v, torch.Tensor):
            continue
        want = target[k].shape
        if v.shape == want:
            continue
        if k in first_convs and v.ndim == 4 and v.shape[0] == want[0] and v.shape[2:] == want[2:] \
                and v.shape[1] == cfg_in_chans:
            continue  # timm's adapt_input_conv maps cfg_in_chans -> model in_chans after this check
        shapes.append(f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(want)}')
    if not (missing or unexpected or shapes):
        return

    def _fmt(title: str, items: List[str], limit: int = 12) -> str:
        if not items:
            return ''
        more = f'\n    ... and {len(items) - limit} more' if len(items) > limit else ''
        return f'\n  {title} ({len(items)}):\n    ' + '\n    '.join(items[:limit]) + more

    classifier_keys = {f'{c}.{p}' for c in classifiers for p in ('weight', 'bias')}
    bad = {s.split(':')[0] for s in shapes}
    head_only = bool(bad) and bad <= classifier_keys and not (missing or unexpected)
    if head_only:
        cause = 'only the classifier differs.'
        advice = ('\nBuild the model with the checkpoint\'s number of classes and declare it: '
                  'num_classes=K, pretrained_cfg_overlay=dict(..., num_classes=K).')
    else:
        cause = 'it was probably saved from another architecture or variant.'
        advice = ('\nCreate the model that matches the checkpoint (its config.json names the architecture), '
                  'or load it with pretrained=False and your own mapping.')
    if any(k in first_convs for k in bad):
        advice += ('\nIf the first conv differs in input channels, the checkpoint has another in_chans than the '
                   'cfg declares: pass pretrained_cfg_overlay=dict(..., input_size=(C, H, W)) with its C.')
    arch = cfg.get('architecture') or type(model).__name__
    raise PretrainedMismatchError(
        f'{source} does not match {arch} as built (in_chans={getattr(model, "in_chans", "?")}, '
        f'num_classes={getattr(model, "num_classes", "?")}, img_size={getattr(model, "img_size", "?")}): {cause}'
        + _fmt('missing from the checkpoint', missing)
        + _fmt('not in the model', unexpected)
        + _fmt('shape mismatches', shapes)
        + advice
    )


def _checked_filter(filter_fn: Optional[Callable], source: str) -> Callable:
    def _filter(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
        # timm retries a filter with one argument on TypeError; the errors raised here are ValueErrors.
        out = filter_fn(state_dict, model) if filter_fn is not None else state_dict
        check_state_dict(out, model, source=source)
        return out
    return _filter


def build_model_with_pretrained(
        model_cls: Callable[..., nn.Module],
        variant: str,
        pretrained: bool = False,
        pretrained_filter_fn: Optional[Callable] = None,
        **kwargs,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` with guarded pretrained loading (see the module docstring).

    Raises:
        PretrainedWeightsNotFoundError: weights requested but not found (names the repo, where it
            looked and the three offline ways to supply them).
        PickleCheckpointError: a .pth / .bin that needs unsafe unpickling.
        PretrainedMismatchError: a checkpoint of another architecture (lists the mismatched keys).
    """
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, False, pretrained_filter_fn=pretrained_filter_fn, **kwargs)

    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    ).to_dict()
    name = f'{variant}.{cfg["tag"]}' if cfg.get('tag') else variant
    where, repo = _describe_source(cfg, kwargs.get('cache_dir'))
    _fail_fast_unpublished(name, cfg, kwargs.get('cache_dir'), where, repo)
    try:
        model = build_model_with_cfg(
            model_cls,
            variant,
            True,
            pretrained_filter_fn=_checked_filter(pretrained_filter_fn, f'The checkpoint from {where}'),
            **kwargs,
        )
    except UserInputError:
        raise
    except Exception as e:
        if _is_pickle_refusal(e):
            raise PickleCheckpointError(
                f'Refused to load {where}: it is a pickle checkpoint that stores Python objects besides '
                f'tensors, and unpickling can run arbitrary code. If you trust its origin, load it explicitly '
                f'and pass the tensors on:\n'
                f'  sd = mednext_zoo.hub.load_state_dict(path, allow_pickle=True)\n'
                f'  model = timm.create_model("{name}", pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd))\n'
                f'or convert it once to safetensors: mednext-zoo export {variant} OUT_DIR --checkpoint PATH '
                f'--allow-pickle.'
            ) from e
        if not _is_not_found(e):
            raise
        status = weight_status(name)
        status_line = f'Weight status of {name}: {status} (see `mednext-zoo list`).\n' \
            if name in PRETRAINED_TAGS else ''
        tags = [t for t in PRETRAINED_TAGS if t.startswith(variant + '.')]
        tags_line = f'Pretrained tags of {variant}: {", ".join(tags)}.\n' if tags and name not in tags else ''
        raise PretrainedWeightsNotFoundError(
            f'pretrained=True but no weights were found for {name}.\n'
            f'Looked in: {where}.\n'
            f'Cause: {_cause(e)}\n'
            + status_line + tags_line + _offline_ways(name, repo)
        ) from e
    # a state_dict passed through pretrained_cfg_overlay is not kept alive by the model's cfg
    if isinstance(getattr(model, 'pretrained_cfg', None), dict):
        model.pretrained_cfg.pop('state_dict', None)
    return model
