"""Pretrained-weight registry and the guarded loader used by every mednext-zoo entry point.

One place for:

* ``HF_HUB_ORG``: the Hugging Face organisation that hosts the weights; every Hub id is
  ``f'{HF_HUB_ORG}/{arch}.{tag}'`` (:func:`hub_id`).
* ``DATASETS``: the facts about each paper dataset the cfgs need (labels, input, normalisation,
  licence, source) and that the model cards print (protocol, metric conventions).
* ``PRETRAINED_TAGS``: every ``arch.tag`` with its dataset and its *real* publication status.
  Nothing is published yet; a tag becomes ``published`` only when its weights are on the Hub.
* :func:`build_model_with_pretrained`: a drop-in for timm's ``build_model_with_cfg`` that keeps
  timm's loading (tags, ``hf-hub:``, ``local-dir:``, ``pretrained_cfg_overlay=dict(file=...)``,
  in_chans / num_classes adaptation) but never lets ``pretrained=True`` end in random weights or
  an opaque stack trace: missing weights, pickle-only checkpoints and checkpoints of another
  architecture raise :class:`~mednext_zoo.errors.UserInputError` subclasses that say what to do.

The hub layer (``mednext_zoo.hub``) builds on this; nothing here imports it.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg

from ..errors import UserInputError

__all__ = [
    'HF_HUB_ORG', 'DATASETS', 'PRETRAINED_TAGS', 'PAPER_CITATION', 'PAPER_DOI',
    'hub_id', 'pretrained_cfg_kwargs', 'weight_status', 'build_model_with_pretrained', 'check_state_dict',
    'PretrainedWeightsNotFoundError', 'PretrainedMismatchError', 'PickleCheckpointError',
]

HF_HUB_ORG = 'mednext-zoo'
"""Hugging Face organisation hosting every mednext-zoo checkpoint (``<org>/<arch>.<tag>``)."""

PAPER_DOI = '10.1371/journal.pone.0340108'
PAPER_CITATION = (
    'Xue Z, Pi P, Liu Z, Zeng Z, Sun Z (2026) MedNeXt for accurate medical image classification and '
    'segmentation: A lightweight transformer-style convolutional neural network. PLoS One 21(1): e0340108. '
    'https://doi.org/10.1371/journal.pone.0340108'
)

STATUS_NOT_PUBLISHED = 'not yet published'

_LICENSE_NOTE = (
    'Licence of the weights = licence of the training data as set by the dataset authors; the licences of the '
    'paper\'s datasets could not all be verified (see license_note / docs/weights.md): read the dataset page\'s '
    'current terms before using or redistributing these weights.'
)

# Facts about the paper's datasets. Label order is the classifier / label-map index order: it is
# explicit on purpose (folder sort order differs between releases). Binary tasks: index 1 is the
# positive class.
DATASETS: Dict[str, Dict[str, Any]] = {
    'sarscov2_ct': dict(
        name='SARS-CoV-2 CT-Scan Dataset',
        task='classification',
        modality='CT (chest, axial slices as 8-bit PNG)',
        url='https://www.kaggle.com/datasets/plameneduardo/sarscov2-ctscan-dataset',
        doi='10.1101/2020.04.24.20078584',
        citation='Soares E, Angelov P, Biaso S, Froes MH, Abe DK. SARS-CoV-2 CT-scan dataset: A large dataset '
                 'of real patients CT scans for SARS-CoV-2 identification. medRxiv 2020.04.24.20078584.',
        license='other',
        license_note='not verified: read the licence shown on the Kaggle page before downloading (the dataset paper, '
                     'medRxiv 2020.04.24.20078584, states none)',
        label_names=('non_covid', 'covid'),
        label_descriptions={
            'non_covid': 'CT slice of a patient not infected by SARS-CoV-2',
            'covid': 'CT slice of a SARS-CoV-2 (COVID-19) positive patient',
        },
        positive_class='covid',
        size='2,482 slices: 1,252 COVID-19 positive, 1,230 negative (Hospital of Sao Paulo, Brazil)',
        in_chans=3,
        img_size=224,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        preprocessing='PNG slices as released (already windowed by the dataset authors, no HU values), '
                      'read as RGB, resized to the input size (224x224 in the paper), scaled to [0, 1], '
                      'normalised with the mean/std below.',
        split='The release has no patient ids, so it can only be split by image: slices of one patient '
              'may fall in both train and test, which makes test figures optimistic.',
        protocol='Paper recipe: 224x224 input, random crop + horizontal flip, AdamW (beta1 0.9), cosine '
                 'schedule, weight decay 0.05, 300 epochs.',
        metric_conventions='Binary task, positive class "covid" (index 1): precision, recall, F1 of the '
                           'positive class; accuracy; ROC AUC from the positive-class probability.',
        paper_results='Paper (Table 2): precision 100.00%, recall 96.75%, F1 98.35%, accuracy 98.39%, '
                      'AUC 0.9988.',
    ),
    'monkeypox_msld': dict(
        name='Monkeypox Skin Lesion Dataset (MSLD)',
        task='classification',
        modality='Dermatology photographs (RGB)',
        url='https://www.kaggle.com/datasets/nafin59/monkeypox-skin-lesion-dataset',
        doi='',
        citation='Ali SN, Ahmed MT, Paul J, Jahan T, Sani SMS, Noor N, Hasan T. Monkeypox skin lesion '
                 'detection using deep learning models: A feasibility study. arXiv:2207.03342 (2022).',
        license='other',
        license_note="not verified: the authors' readme (github.com/ShamsNafisaAli/Monkeypox-Skin-Lesion-Dataset) "
                     'shows a Creative Commons badge whose variant is not stated in text; read the licence on the '
                     'Kaggle page before downloading',
        label_names=('others', 'monkeypox'),
        label_descriptions={
            'others': 'Skin lesion of another disease (chickenpox, measles)',
            'monkeypox': 'Monkeypox (mpox) skin lesion',
        },
        positive_class='monkeypox',
        size='3,192 images (with the authors\' augmented copies): 1,428 monkeypox, 1,764 others; '
             '228 original images (102 monkeypox, 126 others)',
        in_chans=3,
        img_size=224,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        preprocessing='RGB photographs resized to the input size (224x224 in the paper), scaled to [0, 1], '
                      'normalised with the mean/std below.',
        split='The release ships augmented copies of the 228 original images: split by original image '
              '(every augmented copy with its source) or test figures measure memorisation.',
        protocol='Paper recipe: 224x224 input, random crop + horizontal flip, AdamW (beta1 0.9), cosine '
                 'schedule, weight decay 0.05, 300 epochs.',
        metric_conventions='Binary task, positive class "monkeypox" (index 1): precision, recall, F1 of the '
                           'positive class; accuracy; ROC AUC from the positive-class probability.',
        paper_results='Paper (Table 3): precision 98.85%, recall 97.74%, F1 98.29%, accuracy 98.12%, '
                      'AUC 0.9970.',
    ),
    'covid_ct_large': dict(
        name='Large COVID-19 CT scan slice dataset',
        task='classification',
        modality='CT (chest, axial slices as 8-bit PNG)',
        url='https://www.kaggle.com/datasets/maedemaftouni/large-covid19-ct-slice-dataset',
        doi='10.34740/kaggle/dsv/2321803',
        citation='Maftouni M, Law ACC, Shen B, Grado ZJK, Zhou Y, Yazdi NA. A robust ensemble-deep learning '
                 'model for COVID-19 diagnosis based on an integrated CT scan images database. IISE Annual '
                 'Conference and Expo 2021.',
        license='other',
        license_note='not verified: read the licence shown on the Kaggle page before downloading; the slices are '
                     'curated from 7 public datasets, each with its own terms',
        label_names=('non_covid', 'covid'),
        label_descriptions={
            'non_covid': 'Normal CT slice (no COVID-19)',
            'covid': 'CT slice of a COVID-19 patient',
        },
        positive_class='covid',
        size='14,486 slices: 7,593 COVID-19 (466 patients), 6,893 normal (604 patients); the release\'s '
             'CAP (community-acquired pneumonia) class is not used',
        in_chans=3,
        img_size=224,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        preprocessing='PNG slices as released (already windowed, no HU values), read as RGB, resized to '
                      'the input size (224x224 in the paper), scaled to [0, 1], normalised with the mean/std below.',
        split='Split by patient (no patient in two splits), checked by the training code.',
        protocol='Paper recipe: 224x224 input, random crop + horizontal flip, AdamW (beta1 0.9), cosine '
                 'schedule, weight decay 0.05, 300 epochs.',
        metric_conventions='Binary task, positive class "covid" (index 1): precision, recall, F1 of the '
                           'positive class; accuracy; ROC AUC from the positive-class probability.',
        paper_results='Paper (Table 4): recall 99.42%, F1 98.80%, accuracy 98.85%, AUC 0.9972.',
    ),
    'synapse': dict(
        name='Synapse multi-organ CT (MICCAI 2015 BTCV)',
        task='segmentation',
        modality='Contrast-enhanced abdominal CT (axial slices)',
        url='https://www.synapse.org/Synapse:syn3193805/files/',
        doi='10.7303/syn3193805',
        citation='Landman B, Xu Z, Iglesias JE, Styner M, Langerak TR, Klein A. MICCAI multi-atlas labeling '
                 'beyond the cranial vault - workshop and challenge (2015). doi:10.7303/syn3193805.',
        license='other',
        license_note="not verified: the raw BTCV data need a Synapse account and its terms of use; TransUNet's "
                     'preprocessed copy is shared for research use and not to be redistributed (TransUNet '
                     'datasets/README)',
        label_names=('background', 'aorta', 'gallbladder', 'left kidney', 'right kidney', 'liver',
                     'pancreas', 'spleen', 'stomach'),
        label_descriptions={},
        positive_class=None,
        size='30 CT volumes; TransUNet split 18 train (2,211 axial slices) / 12 test',
        in_chans=1,
        img_size=224,
        mean=(0.0,),
        std=(1.0,),
        preprocessing='CT window: HU clipped to [-125, 275] and each volume scaled to [0, 1] (as in TransUNet\'s '
                      'released files); every axial slice resized to the input size (224x224 in the paper; 1 '
                      'channel); no further normalisation (mean 0, std 1), as in TransUNet\'s data loader.',
        split='TransUNet split. Test: case0001, 0002, 0003, 0004, 0008, 0022, 0025, 0029, 0032, 0035, 0036, '
              '0038; train: the other 18 cases.',
        protocol='0.5 CE + 0.5 soft Dice over 9 classes, random rot90 + flip / rotation; Adam, batch 12, '
                 '100 epochs. Inference slice by slice at 224x224, argmax, resized back (nearest), stacked '
                 'to 3D.',
        metric_conventions='Per organ per test volume in 3D: Dice (DSC) and HD95. Legacy protocol (as in '
                           'published tables): HD95 in voxels, empty prediction scores DSC 0 / HD95 0; mean '
                           'over 8 organs of the mean over 12 cases. The strict protocol (HD95 in mm, '
                           'worst-case distance for a missed organ) is reported separately and named.',
        paper_results='Paper (Table 5): mean DSC 79.45%, mean HD95 23.96.',
    ),
    'acdc': dict(
        name='ACDC cardiac cine-MRI',
        task='segmentation',
        modality='Cine MRI (short axis, ED and ES frames)',
        url='https://www.creatis.insa-lyon.fr/Challenge/acdc/databases.html',
        doi='10.1109/TMI.2018.2837502',
        citation='Bernard O, et al. Deep learning techniques for automatic MRI cardiac multi-structures '
                 'segmentation and diagnosis: is the problem solved? IEEE TMI 37(11):2514-2525 (2018).',
        license='other',
        license_note="not verified: any use must cite Bernard et al., IEEE TMI 2018 (ACDC pages); the database page's "
                     'licence text could not be checked (a third-party mirror lists cc-by-nc-sa-4.0)',
        label_names=('background', 'right ventricle', 'myocardium', 'left ventricle'),
        label_descriptions={
            'right ventricle': 'right ventricle cavity (RV)',
            'myocardium': 'left-ventricular myocardium (Myo)',
            'left ventricle': 'left ventricle cavity (LV)',
        },
        positive_class=None,
        size='100 patients x (ED, ES); TransUNet-lineage split 70 / 10 / 20 patients',
        in_chans=1,
        img_size=224,
        mean=(0.0,),
        std=(1.0,),
        preprocessing='Each volume min-max scaled to [0, 1]; every short-axis slice resized to the input '
                      'size (224x224 in the paper; 1 channel); no further normalisation (mean 0, std 1). The '
                      'paper does not state its ACDC intensity step; this one is mednext-zoo\'s.',
        split='Test patients 002, 003, 008, 009, 012, 014, 017, 024, 042, 048, 049, 053, 055, 064, 067, 079, '
              '081, 088, 092, 095 (ED + ES = 40 volumes); validation 019, 021, 029, 033, 041, 050, 061, 071, '
              '076, 080; train the other 70.',
        protocol='Same recipe as Synapse (0.5 CE + 0.5 Dice; Adam, batch 12, 100 epochs), slice-wise '
                 'inference, per-volume metrics.',
        metric_conventions='Per structure per test volume in 3D: DSC for RV, Myo, LV and their mean.',
        paper_results='Paper (Table 6): mean DSC 91.28%.',
    ),
}

# Every pretrained tag, its dataset and its real status. Publishing a tag = uploading it with
# ``mednext-zoo push`` and then setting its status here to 'published' (with the Hub revision).
PRETRAINED_TAGS: Dict[str, Dict[str, Any]] = {
    'mednext_base.sarscov2_ct': dict(dataset='sarscov2_ct', status=STATUS_NOT_PUBLISHED, revision=None),
    'mednext_base.monkeypox_msld': dict(dataset='monkeypox_msld', status=STATUS_NOT_PUBLISHED, revision=None),
    'mednext_base.covid_ct_large': dict(dataset='covid_ct_large', status=STATUS_NOT_PUBLISHED, revision=None),
    'medunext_base.synapse': dict(dataset='synapse', status=STATUS_NOT_PUBLISHED, revision=None),
    'medunext_base.acdc': dict(dataset='acdc', status=STATUS_NOT_PUBLISHED, revision=None),
}


def hub_id(arch: str, tag: str) -> str:
    """Hugging Face repo id of ``arch.tag``: ``'<HF_HUB_ORG>/<arch>.<tag>'``."""
    return f'{HF_HUB_ORG}/{arch}.{tag}'


def weight_status(name: str) -> str:
    """Publication status of ``arch.tag`` (``'not yet published'``, ``'published'``, or ``'no weights'``)."""
    entry = PRETRAINED_TAGS.get(name)
    return entry['status'] if entry else 'no weights'


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
        notes=(_LICENSE_NOTE,),
    )


class PretrainedWeightsNotFoundError(UserInputError):
    """``pretrained=True`` but the weights are not where timm looked."""


class PretrainedMismatchError(UserInputError):
    """The checkpoint does not belong to this architecture / configuration."""


class PickleCheckpointError(UserInputError):
    """The checkpoint needs full (unsafe) unpickling and was not explicitly allowed."""


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
