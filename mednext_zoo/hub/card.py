"""Model cards (README.md) for mednext-zoo checkpoints, written for clinician-researchers."""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from huggingface_hub import EvalResult, ModelCardData

from ..catalog import HF_HUB_ORG, PAPER_CITATION, PAPER_DOI
from ..version import __version__

__all__ = ['render_model_card', 'eval_results']

PAPER_BIBTEX = """@article{xue2026mednext,
  title   = {MedNeXt for accurate medical image classification and segmentation:
             A lightweight transformer-style convolutional neural network},
  author  = {Xue, Z. and Pi, P. and Liu, Z. and Zeng, Z. and Sun, Z.},
  journal = {PLoS One},
  volume  = {21},
  number  = {1},
  pages   = {e0340108},
  year    = {2026},
  doi     = {10.1371/journal.pone.0340108}
}"""


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f'{v:.4f}' if abs(v) < 1.5 else f'{v:.2f}'
    return str(v)


_COLUMNS = (  # optional keys of a metric entry -> column header
    ('ci', '95% CI'),
    ('mean_std', 'Mean ± std over seeds'),
    ('paper', 'Paper (reference, not measured here)'),
)


def _metrics_table(metrics: Mapping[str, Any]) -> List[str]:
    """Rows of ``name -> value`` or ``name -> {'value': v, 'ci': (lo, hi), 'mean_std': str, 'paper': p}``.

    A column is printed for each optional key that any entry has; the value column is labelled "Measured".
    """
    entries = {n: (dict(v) if isinstance(v, Mapping) else {'value': v}) for n, v in metrics.items()}
    cols = [(k, h) for k, h in _COLUMNS if any(e.get(k) is not None for e in entries.values())]
    measured = 'Measured (these weights)' if cols else 'Value'
    lines = ['| Metric | ' + ' | '.join([measured] + [h for _, h in cols]) + ' |',
             '|---|' + '---|' * (1 + len(cols))]
    for name, e in entries.items():
        cells = [_fmt_value(e.get('value')) if e.get('value') is not None else '-']
        for k, _ in cols:
            v = e.get(k)
            if v is None:
                cells.append('')
            elif k == 'ci':
                cells.append(f'{_fmt_value(v[0])} - {_fmt_value(v[1])}')
            else:
                cells.append(_fmt_value(v))
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return lines


# metric names as our cards write them -> the Hub's metric type ids (the ``model-index`` ``metrics[].type``)
_METRIC_TYPES = {'auc': 'roc_auc', 'roc_auc': 'roc_auc', 'f1': 'f1', 'accuracy': 'accuracy', 'precision': 'precision',
                 'recall': 'recall', 'dice': 'dice', 'hd95': 'hd95'}


def _metric_type(name: str) -> str:
    key = name.lower().replace(' ', '_')
    return _METRIC_TYPES.get(key) or _METRIC_TYPES.get(key.split('_', 1)[0]) or key


def eval_results(
        metrics: Optional[Mapping[str, Any]],
        *,
        task: str,
        dataset_name: str,
        dataset_type: str,
) -> List[EvalResult]:
    """The card's measured metrics as huggingface_hub ``EvalResult`` s (the ``model-index`` of the YAML header).

    ``metrics`` maps a name to a number or to ``{'value': v, ...}``; entries without a finite numeric value
    (a paper reference, a note) are left out. The metric type is the Hub's id (``auc`` -> ``roc_auc``,
    ``dice_strict`` -> ``dice``) and the metric name keeps ours, so the Hub's results table shows both.
    """
    out = []
    for name, entry in (metrics or {}).items():
        value = entry.get('value') if isinstance(entry, Mapping) else entry
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out.append(EvalResult(
            task_type='image-segmentation' if task == 'segmentation' else 'image-classification',
            task_name=task,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            metric_type=_metric_type(name),
            metric_name=name,
            metric_value=round(float(value), 6),
        ))
    return out


def _slug(text: str) -> str:
    """A Hub-style id from free text: lower case, runs of other characters as one '-'."""
    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-') or 'dataset'


def _entry_doc(arch: str) -> str:
    try:
        from timm.models import model_entrypoint
        doc = (model_entrypoint(arch).__doc__ or '').strip().splitlines()
        short = doc[0].split(':')[0].split(',')[0].strip().rstrip('.') if doc else ''
        return f'{short} (`{arch}`)' if short else f'`{arch}`'
    except Exception:
        return arch


def render_model_card(
        *,
        arch: str,
        repo_id: Optional[str],
        task: str,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str,
        label_names: Optional[Sequence[str]],
        num_params: int,
        gflops: Optional[float],
        flops_skipped: Sequence[str] = (),
        dataset: Optional[Mapping[str, Any]] = None,
        dataset_tag: Optional[str] = None,
        metrics: Optional[Mapping[str, Any]] = None,
        metrics_note: Optional[str] = None,
        split: Optional[str] = None,
        training: Optional[str] = None,
        license: Optional[str] = None,
        published: bool = False,
        sections: Sequence[Tuple[str, str]] = (),
) -> str:
    """The README.md text: YAML metadata for the Hub, then the card body.

    ``dataset`` is an entry of ``DATASETS`` or a mapping with the same keys (only ``name`` is
    required) describing the training data; ``dataset_tag`` its registry key, if any. ``sections`` are extra
    ``(title, markdown)`` sections placed after the evaluation (e.g. how the weights were reproduced).
    """
    ds: Dict[str, Any] = dict(dataset or {})
    in_chans, height, width = input_size
    segmentation = task == 'segmentation'
    name = repo_id.split('/')[-1] if repo_id else (f'{arch}.{dataset_tag}' if dataset_tag else arch)
    results = eval_results(metrics, task=task, dataset_name=ds.get('name') or 'unnamed dataset',
                           dataset_type=dataset_tag or _slug(ds.get('name') or 'unnamed dataset'))
    card_data = ModelCardData(
        license=license or ds.get('license') or 'other',
        library_name='timm',
        pipeline_tag='image-segmentation' if segmentation else 'image-classification',
        tags=['timm', 'mednext-zoo', 'medical-imaging', 'mednext-xue-2026', task]
        + ([dataset_tag] if dataset_tag else []),
        model_name=name if results else None,  # the model-index needs a name
        eval_results=results or None,
    )
    source = f'hf-hub:{repo_id}' if repo_id else 'local-dir:/path/to/this/folder'
    what = 'segmentation network' if segmentation else 'image classifier'
    L: List[str] = ['---', card_data.to_yaml(), '---', '', f'# {name}', '']
    summary = f'**{_entry_doc(arch)}**: a 2D medical {what} from Xue et al., *PLoS One* 2026'
    if ds:
        summary += f', trained on the **{ds["name"]}**'
        if label_names:
            labels = ', '.join(f'"{n}"' for n in label_names)
            summary += (' to ' + ('label every pixel' if segmentation else 'classify each image')
                        + f' as one of {labels}')
        summary += '.' + (f' Modality: {ds["modality"]}.' if ds.get('modality') else '')
    else:
        summary += '.'
    L += [summary, '']
    L += [
        '> **Not Roy et al.\'s MedNeXt.** This model is the 2D MedNeXt / MedUNeXt of Xue et al. (PLoS One 2026, '
        f'doi:{PAPER_DOI}), built from LAFFN, SEM and SDFFN blocks. It only shares its name with the 3D '
        'ConvNeXt-style segmentation network "MedNeXt" of Roy et al. (MICCAI 2023, MIC-DKFZ / nnU-Net, MONAI). '
        'Weights, code and reported results of the two are not interchangeable.',
        '',
    ]
    if arch.endswith('_hr'):
        L += [
            f'> **A variant of ours, not the paper\'s.** `{arch}` is the paper\'s MedUNeXt plus a full-resolution skip '
            'and bilinear upsampling (`full_res=\'skip\'`, `upsample=\'bilinear\'`), added because the paper\'s '
            'structure trains several times slower on small structures; see docs/medunext.md, "Trainability".',
            '',
        ]
    if not published and repo_id:
        L += [
            f'> **Status: not yet published.** This card was generated locally with `mednext_zoo.hub.save_pretrained`; '
            f'weights become available under `{repo_id}` only once uploaded.',
            '',
        ]

    unit = 'slice' if any(m in ds.get('modality', '') for m in ('CT', 'MRI')) else 'image'
    L += ['## Intended use', '']
    L += [
        '- Research on medical image analysis: benchmarking, transfer learning and fine-tuning on your own '
        'labelled data, reproduction of the paper.',
        f'- Input: one 2D {unit} at a time. '
        + ('A slice-level output is not a patient-level finding.' if not segmentation
           else 'Volumes are segmented slice by slice; inter-slice context is not modelled.'),
        '',
        '> **Warning: not for diagnosis.** This is a research model. It is not a medical device, has not been '
        'clinically validated or cleared by any regulator, and must not be used to diagnose, screen, triage or '
        'treat patients or to replace the judgement of a qualified clinician. Its performance on your scanners, '
        'acquisition protocols and patient population is unknown until you measure it on data from them.',
        '',
    ]

    L += ['## How to load', '', '```python',
          'import mednext_zoo, timm  # import mednext_zoo first: it registers MedNeXt / MedUNeXt in timm',
          f'model = timm.create_model("{source}", pretrained=True).eval()', '```', '']
    cache_way = (f'copy a Hugging Face cache made with `hf download {repo_id} --cache-dir DIR` and set '
                 '`HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1`; or ') if repo_id else ''
    L += [
        f'Offline (hospital networks, clusters): {cache_way}load this folder directly with '
        '`timm.create_model("local-dir:/path/to/folder", pretrained=True)`; or pass the weights file '
        f'with `pretrained_cfg_overlay=dict(file="/path/to/model.safetensors")`. If the weights cannot be found, '
        'loading stops with an error; it never falls back to random weights.',
        '',
        f'Fine-tuning: `timm.create_model("{source}", pretrained=True, num_classes=K, in_chans=1, '
        f'img_size=256)` re-initialises the {"segmentation" if segmentation else "classification"} head for K '
        'classes, adapts the first convolution to 1 (or 3) input channels and resamples the axial mixing matrices '
        'to the new input size.',
        '',
    ]
    if segmentation:
        L += ['Hugging Face transformers: not supported. Its timm wrapper (`AutoModelForImageClassification`, '
              '`pipeline`) handles image classifiers only; this segmentation network loads with timm as above.', '']
    else:
        hf_source = repo_id or '/path/to/this/folder'
        L += ['With Hugging Face transformers (4.53 or later), which builds the model through timm\'s registry:', '',
              '```python',
              'import mednext_zoo  # first: without it transformers reports the architecture as unknown to timm',
              'from transformers import pipeline',
              f'classify = pipeline("image-classification", model="{hf_source}")',
              'classify("image.png")  # [{"label": ..., "score": ...}, ...]',
              '```', '']
        if in_chans != 3:
            L += [f'The pipeline feeds RGB images; this {in_chans}-channel model needs '
                  f'`AutoModelForImageClassification.from_pretrained("{hf_source}")` on your own '
                  f'(B, {in_chans}, {height}, {width}) tensors.', '']

    L += ['## Input', '', '| | |', '|---|---|',
          f'| Channels | {in_chans} |',
          f'| Size | {height} x {width} pixels (fixed at construction; other sizes: `img_size=...`) |',
          f'| Intensities | {ds.get("preprocessing", "as used in training (not recorded)")} |',
          f'| Normalisation | (x - mean) / std, mean = {tuple(round(m, 4) for m in mean)}, '
          f'std = {tuple(round(s, 4) for s in std)} |',
          f'| Resize interpolation | {interpolation} |',
          '| Output | ' + ('logits (B, K, H, W), one map per label; argmax gives the label map |' if segmentation
                         else 'logits (B, K), one per label; softmax gives scores that are not calibrated '
                              'probabilities of disease |'),
          '']
    if not segmentation:
        L += ['`timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))` builds the matching '
              'evaluation transform for PIL images.', '']

    L += ['## Label map', '']
    if label_names:
        descriptions = ds.get('label_descriptions', {})
        L += ['| Index | Label | Meaning |', '|---|---|---|']
        for i, n in enumerate(label_names):
            L.append(f'| {i} | {n} | {descriptions.get(n, "")} |')
        if ds.get('positive_class'):
            L += ['', f'Positive class for binary metrics: **{ds["positive_class"]}** '
                      f'(index {list(label_names).index(ds["positive_class"])}). The index order is fixed here; '
                      'do not rely on folder sort order when preparing data.']
    else:
        L += ['No label names were recorded for this checkpoint; outputs are indices 0..K-1.']
    L += ['']

    L += ['## Training data', '']
    if ds:
        name = f'[{ds["name"]}]({ds["url"]})' if ds.get('url') else ds['name']
        L += [f'- Dataset: {name}' + (f' (doi:{ds["doi"]})' if ds.get('doi') else '')]
        if ds.get('size'):
            L += [f'- Size: {ds["size"]}']
        if ds.get('license_note'):
            licence = f'- Dataset licence: {ds["license_note"]} (the weights carry the dataset\'s terms)'
        elif ds.get('license'):
            licence = (f'- Dataset licence: {ds["license"]} (as listed by the dataset authors; the weights carry the '
                       'same terms)')
        else:
            licence = '- Dataset licence: not recorded'
        L += [licence,
              '- Split: ' + (' '.join(t for t in (ds.get('split'), split) if t) or 'not recorded'),
              '- Protocol: ' + (' '.join(t for t in (ds.get('protocol'), training) if t) or 'not recorded')]
        if ds.get('citation'):
            L += [f'- Dataset citation: {ds["citation"]}']
        L += ['']
    else:
        L += [f'- Split: {split or "not recorded"}', f'- Protocol: {training or "not recorded"}', '']

    L += ['## Evaluation', '']
    if metrics:
        L += _metrics_table(metrics) + ['']
        if ds.get('metric_conventions'):
            L += [f'Conventions: {ds["metric_conventions"]}', '']
        if metrics_note:
            L += [metrics_note, '']
    else:
        L += ['No evaluation figures are recorded for these weights.', '']
    if ds.get('paper_results'):
        L += [f'For reference only (the paper\'s own figures, not measured on this checkpoint): '
              f'{ds["paper_results"]}', '']

    for title, body in sections:
        L += [f'## {title}', '', body.rstrip(), '']

    L += ['## Size and compute', '',
          f'- Parameters: {num_params / 1e6:.2f} M (every learnable tensor, '
          f'{len(label_names) if label_names else "K"}-class head)']
    if gflops is not None and not math.isnan(gflops):
        skipped = f'; ops fvcore does not count: {", ".join(sorted(flops_skipped))}' if flops_skipped else ''
        L += [f'- FLOPs: {gflops:.3f} GFLOPs (fvcore, multiply-adds, batch 1, {in_chans}x{height}x{width}{skipped})']
    L += ['']

    L += ['## Limitations', '',
          '- 2D model: no inter-slice or temporal context.',
          '- Public research datasets are small, come from few sites and may contain near-duplicate images; '
          'figures measured on them overestimate performance on new sites.',
          '- Reported metrics are point estimates on one split unless a confidence interval is given.', '']

    L += ['## Citation', '', PAPER_CITATION, '', '```bibtex', PAPER_BIBTEX, '```', '',
          f'Card written by mednext-zoo {__version__}; the project\'s checkpoints are hosted under '
          f'https://huggingface.co/{HF_HUB_ORG}.', '']
    return '\n'.join(L)
