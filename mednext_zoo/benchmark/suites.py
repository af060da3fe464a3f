"""Counting suites: the paper's Table 2 efficiency figures and its Table 7 ablation, measured.

Both suites count params and FLOPs only (fvcore, batch 1, 224x224, 2-class heads as in the paper's
SARS-CoV-2 CT experiments), so they are exact and machine-independent; the machine and versions are
still recorded with the results.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import timm
import torch.nn as nn

from ..errors import UserInputError
from ..machine import machine_info, machine_label
from ..models.mednext import FFNS, MODEL_ARGS, TOKEN_MIXERS, MedNeXt
from .counting import count_model
from .report import _atomic_write, _fmt, rows_table
from .specs import build_model, resolve_models

__all__ = ['paper_table', 'ablation', 'sdffn_claim', 'run_suite', 'ABLATION_VARIANTS', 'PLAIN_TOKEN_MIXER']

PAPER_NUM_CLASSES = 2  # SARS-CoV-2 CT: COVID / non-COVID
PLAIN_TOKEN_MIXER = 'dwconv'  # what "SEM off" means in our ablation (the paper does not say)
PLAIN_TOKEN_MIXER_DOC = ('a 7x7 depth-wise conv then a linear layer (ConvNeXt-style spatial mixing, '
                         f'`{TOKEN_MIXERS[PLAIN_TOKEN_MIXER].__name__}`, about C^2 + 50 C params per block)')

# Table 2 figures that survive in the paper's prose (the table body was lost in extraction).
PAPER_TABLE2 = [
    # (our model name, paper's name, paper params M, paper GFLOPs, note)
    ('mednext_base', 'MedNeXt', 10.72, 1.90, ''),
    ('swinv2_tiny_w6_192', 'Swin-Transformer v2', None, 3.24,
     "our Swin-v2-T at 192x192 with window 6: the only natural setting that gives the paper's 3.24 G"),
    ('swinv2_tiny_window8_256', 'Swin-Transformer v2', None, 3.24, 'Swin-v2-T at its native 256x256, window 8'),
    ('swinv2_cr_tiny_224', 'Swin-Transformer v2', None, 3.24, "timm's 224x224 Swin-v2-T ('cr' variant), window 7"),
    ('convnext_tiny', 'ConvNeXt-T', None, 4.50, ''),
    ('resnet18', 'ResNet-18', None, None, "the prose says only 'similar computational costs' to MedNeXt"),
    ('resnet50', 'ResNet-50', None, None, 'compared in Fig 6; no figure in the surviving text'),
    ('mednext_tiny', '-', None, None, 'family member of this package, not in the paper'),
    ('mednext_small', '-', None, None, 'family member of this package, not in the paper'),
    ('mednext_large', '-', None, None, 'family member of this package, not in the paper'),
]
PAPER_MEDUNEXT_PARAMS_M = 39.85  # Table 6, 9 classes

# Table 7: (#, LAFFN, token mixer, FFN); #5-#7 are the three pairs (the prose names no order for them).
ABLATION_VARIANTS = [
    (1, False, PLAIN_TOKEN_MIXER, 'mlp'),
    (2, True, PLAIN_TOKEN_MIXER, 'mlp'),
    (3, False, 'sem', 'mlp'),
    (4, False, PLAIN_TOKEN_MIXER, 'sdffn'),
    (5, True, 'sem', 'mlp'),
    (6, True, PLAIN_TOKEN_MIXER, 'sdffn'),
    (7, False, 'sem', 'sdffn'),
    (8, True, 'sem', 'sdffn'),
]
# The paper's stated deltas against #1 (Table 7 prose): variant -> (params %, FLOPs %)
PAPER_ABLATION_DELTAS = {3: (None, -20.9), 4: (-29.1, None), 8: (-25.0, -31.7)}


def _weights_and_all(module: nn.Module) -> Dict[str, int]:
    return {
        'weights': sum(p.numel() for p in module.parameters() if p.dim() > 1),
        'with_biases': sum(p.numel() for p in module.parameters()),
    }


def sdffn_claim(dim: int = 512) -> List[Dict[str, Any]]:
    """The paper's FFN parameter claim at ``dim``, counted on this package's modules."""
    ffn4 = _weights_and_all(FFNS['mlp'](dim))
    sdffn = _weights_and_all(FFNS['sdffn'](dim))
    return [
        {'module': f'ratio-4 FFN (ConvFFN, dim {dim})', 'paper': 2_097_152, 'formula': '8 C^2',
         'ours_weights': ffn4['weights'], 'ours_with_biases': ffn4['with_biases'],
         'note': 'matches the paper (weights only)'},
        {'module': f'SDFFN (dim {dim})', 'paper': 528_036, 'formula': '2 C^2 + 9 C',
         'ours_weights': sdffn['weights'], 'ours_with_biases': sdffn['with_biases'],
         'note': 'the paper prints 528,036; 2 C^2 + 9 C = 528,896 and no bias convention gives 528,036: a typo'},
    ]


def paper_table(progress: bool = False) -> Dict[str, Any]:
    """Our params / GFLOPs beside the paper's Table 2 figures (2-class heads), plus the SDFFN claim."""
    rows = []
    for name, paper_name, p_params, p_gflops, note in _progress(PAPER_TABLE2, progress, 'paper_table'):
        spec = resolve_models([name], num_classes=PAPER_NUM_CLASSES, reference='')[0]
        c = count_model(build_model(spec), spec.input_size)
        row = {'model': name, 'img': spec.img_size, 'paper_model': paper_name, 'paper_params_m': p_params,
               'params_m': c.params / 1e6, 'paper_gflops': p_gflops, 'gflops': c.flops / 1e9, 'note': note}
        row['params_diff_pct'] = 100 * (row['params_m'] / p_params - 1) if p_params else None
        row['gflops_diff_pct'] = 100 * (row['gflops'] / p_gflops - 1) if p_gflops else None
        rows.append(row)
    seg = []
    for name in timm.list_models('medunext_base'):
        spec = resolve_models([name], task='seg', reference='')[0]
        c = count_model(build_model(spec), spec.input_size)
        seg.append({'model': name, 'img': spec.img_size, 'in_chans': spec.in_chans, 'classes': spec.num_classes,
                    'paper_params_m': PAPER_MEDUNEXT_PARAMS_M, 'params_m': c.params / 1e6, 'gflops': c.flops / 1e9,
                    'params_diff_pct': 100 * (c.params / 1e6 / PAPER_MEDUNEXT_PARAMS_M - 1)})
    return {'classification': rows, 'segmentation': seg, 'sdffn_claim': sdffn_claim()}


def _variant(laffn: bool, mixer: str, ffn: str) -> MedNeXt:
    return MedNeXt(num_classes=PAPER_NUM_CLASSES, img_size=224, laffn=laffn, token_mixer=mixer, ffn=ffn,
                   **MODEL_ARGS['mednext_base'])


def ablation(progress: bool = False) -> Dict[str, Any]:
    """Table 7's eight variants of ``mednext_base`` (2 classes, 224): params, GFLOPs and deltas vs #1."""
    rows = []
    for idx, laffn, mixer, ffn in _progress(ABLATION_VARIANTS, progress, 'ablation'):
        model = _variant(laffn, mixer, ffn)
        c = count_model(model, (3, 224, 224))
        mixer_params = sum(p.numel() for b in _blocks(model) for p in b.token_mixer.parameters())
        rows.append({'#': idx, 'LAFFN': 'on' if laffn else 'off', 'token_mixer': 'SEM' if mixer == 'sem' else mixer,
                     'FFN': 'SDFFN' if ffn == 'sdffn' else 'ratio-4 FFN', 'params_m': c.params / 1e6,
                     'gflops': c.flops / 1e9, 'mixer_params_m': mixer_params / 1e6})
    base = rows[0]
    for r in rows:
        r['params_delta_pct'] = 100 * (r['params_m'] / base['params_m'] - 1)
        r['gflops_delta_pct'] = 100 * (r['gflops'] / base['gflops'] - 1)
        paper = PAPER_ABLATION_DELTAS.get(r['#'], (None, None))
        r['paper_params_delta_pct'], r['paper_gflops_delta_pct'] = paper
    by = {r['#']: r for r in rows}
    args = MODEL_ARGS['mednext_base']
    # Checks that do not depend on the unknown plain token mixer:
    ffn_saving = by[1]['params_m'] - by[4]['params_m']  # ratio-4 FFN -> SDFFN, mixer-independent
    implied_p1 = ffn_saving / 0.291
    implied_f1 = by[3]['gflops'] / (1 - 0.209)
    checks = {
        'ffn_saving_params_m': ffn_saving,
        'implied_baseline_params_m': implied_p1,
        'implied_full_params_m': 0.75 * implied_p1,
        'our_full_params_m': by[8]['params_m'],
        'paper_full_over_sem_only_gflops': (1 - 0.317) / (1 - 0.209),
        'our_full_over_sem_only_gflops': by[8]['gflops'] / by[3]['gflops'],
        'implied_baseline_gflops': implied_f1,
        # what the paper's plain mixer must cost in total (8 blocks) for its baseline to be #1
        'implied_plain_mixer_params_m': by[1]['mixer_params_m'] + implied_p1 - by[1]['params_m'],
        'implied_plain_mixer_extra_gflops': implied_f1 - by[1]['gflops'],
        'implied_plain_mixer_c2_per_block': (by[1]['mixer_params_m'] + implied_p1 - by[1]['params_m']) * 1e6 / sum(
            d * d * n for d, n in zip(args['dims'], args['depths'], strict=True)),
        'our_plain_mixer_params_m': by[1]['mixer_params_m'],
    }
    return {'plain_token_mixer': PLAIN_TOKEN_MIXER, 'plain_token_mixer_doc': PLAIN_TOKEN_MIXER_DOC,
            'variants': rows, 'checks': checks}


def _blocks(model: MedNeXt):
    for stage in model.stages:
        yield from stage.blocks


def _progress(items, enabled: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, disable=not enabled, leave=False)


def _pct(v: Optional[float]) -> str:
    return '-' if v is None else f'{v:+.1f}%'


def _header(title: str, info: Dict[str, Any]) -> List[str]:
    return [
        f'# {title}', '',
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {machine_label(info)}; torch {info['torch']}, "
        f"timm {info['timm']}, fvcore {info['fvcore']}, mednext-zoo {info['mednext_zoo']}. Counts are exact and "
        'machine-independent: params = every parameter element; GFLOPs = fvcore multiply-adds at batch 1.', '',
    ]


def paper_table_markdown(data: Dict[str, Any], info: Dict[str, Any]) -> str:
    """Markdown report of :func:`paper_table`'s result (``info``: :func:`machine_info`): params / GFLOPs beside the
    paper's, the MedUNeXt row and the SDFFN parameter claim."""
    lines = _header("Paper Table 2 efficiency figures vs ours (2-class heads, as in the paper's CT task)", info)
    rows = [{**r, 'params_diff_pct': _pct(r['params_diff_pct']), 'gflops_diff_pct': _pct(r['gflops_diff_pct']),
             'model': f"`{r['model']}`"} for r in data['classification']]
    lines += [rows_table(rows, ['model', 'img', 'paper_model', 'paper_params_m', 'params_m', 'params_diff_pct',
                                'paper_gflops', 'gflops', 'gflops_diff_pct', 'note']), '']
    lines += [
        "The paper's table body did not survive text extraction; the paper figures above are the ones its prose "
        'states (MedNeXt 10.72 M / 1.90 G, Swin-Transformer v2 3.24 G, ConvNeXt-T 4.50 G). The paper does not '
        "say at which resolution it counted Swin-v2: its 3.24 G matches Swin-v2-T only at 192x192 with window 6 "
        '(fvcore gives 3.29 G), while Swin-v2-T at its native 256 costs 5.96 G and timm\'s 224 variant 4.66 G. '
        'Comparing MedNeXt at 224 with Swin-v2 at 192 is therefore a comparison across resolutions.', '',
    ]
    if data['segmentation']:
        seg = [{**r, 'params_diff_pct': _pct(r['params_diff_pct'])} for r in data['segmentation']]
        lines += ['## MedUNeXt (Table 6)', '',
                  rows_table(seg, ['model', 'img', 'in_chans', 'classes', 'paper_params_m', 'params_m',
                                   'params_diff_pct', 'gflops']), '']
    else:
        lines += ['MedUNeXt: no `medunext_base` is registered in this version, so its row (paper: 39.85 M params, '
                  '9 classes) is not measured.', '']
    claim = [{**r, 'paper': f"{r['paper']:,}", 'ours_weights': f"{r['ours_weights']:,}",
              'ours_with_biases': f"{r['ours_with_biases']:,}"} for r in data['sdffn_claim']]
    lines += ['## The SDFFN parameter claim (dim 512)', '',
              rows_table(claim, ['module', 'formula', 'paper', 'ours_weights', 'ours_with_biases', 'note']), '']
    return '\n'.join(lines)


def ablation_markdown(data: Dict[str, Any], info: Dict[str, Any]) -> str:
    """Markdown report of :func:`ablation`'s result (``info``: :func:`machine_info`): the variant table with our and the
    paper's deltas, and what does and does not depend on the plain token mixer."""
    lines = _header("Paper Table 7 ablation variants, counted (mednext_base, 224x224, 2 classes)", info)
    rows = [{**r, 'params_delta_pct': _pct(r['params_delta_pct']), 'gflops_delta_pct': _pct(r['gflops_delta_pct']),
             'paper_params_delta_pct': _pct(r['paper_params_delta_pct']),
             'paper_gflops_delta_pct': _pct(r['paper_gflops_delta_pct'])} for r in data['variants']]
    lines += [rows_table(rows, ['#', 'LAFFN', 'token_mixer', 'FFN', 'params_m', 'gflops', 'params_delta_pct',
                                'paper_params_delta_pct', 'gflops_delta_pct', 'paper_gflops_delta_pct']), '']
    c = data['checks']
    lines += [
        f"Plain token mixer (SEM off): `{data['plain_token_mixer']}`, {data['plain_token_mixer_doc']} "
        '(`MedNeXt(token_mixer="dwconv")`). The paper does not say what replaces SEM in its ablation. Deltas are '
        "against #1 (LAFFN off, plain mixer, ratio-4 FFN). #5-#7 are the three pairs of modules in the order "
        "LAFFN+SEM, LAFFN+SDFFN, SEM+SDFFN: the paper's prose gives no order for them (it calls #6 and #7 the "
        'configurations lacking SEM, which no assignment of three pairs satisfies).', '',
        '### What holds whatever the plain mixer is', '',
        f"- SDFFN replaces the ratio-4 FFN and saves {c['ffn_saving_params_m']:.3f} M params in every variant. "
        f"For that to be the paper's -29.1%, its baseline #1 must have {c['implied_baseline_params_m']:.2f} M params; "
        f"then its -25% for #8 gives {c['implied_full_params_m']:.2f} M for the full model: ours has "
        f"{c['our_full_params_m']:.2f} M.",
        f"- Full (#8) over SEM-only (#3) FLOPs: the paper's -31.7% and -20.9% imply "
        f"{c['paper_full_over_sem_only_gflops']:.4f}; ours {c['our_full_over_sem_only_gflops']:.4f}.",
        '',
        '### What depends on it', '',
        f"- With the `{data['plain_token_mixer']}` mixer ({c['our_plain_mixer_params_m']:.2f} M params over the "
        '8 blocks) '
        'SEM is heavier than the plain mixer, so #3 adds params and FLOPs where the paper reports -20.9% FLOPs, and '
        "#8 vs #1 does not reproduce -25% / -31.7%. The paper's figures require a plain mixer costing about "
        f"{c['implied_plain_mixer_params_m']:.2f} M params over the 8 blocks (about "
        f"{c['implied_plain_mixer_c2_per_block']:.1f} C^2 per block) and about "
        f"{c['implied_plain_mixer_extra_gflops']:.2f} GFLOPs more than ours (baseline "
        f"{c['implied_baseline_params_m']:.2f} M / {c['implied_baseline_gflops']:.2f} G). That is heavier than SEM "
        '(about 8 C^2 per block) and than any plain mixer we know of: a depth-wise conv mixer has about 1 C^2, '
        'pooling none, self-attention 4 C^2. We therefore keep the light, common choice and report the deltas it '
        'gives rather than tune a mixer to hit the paper\'s percentages.', '',
    ]
    return '\n'.join(lines)


def run_suite(name: str, out_dir: Union[str, Path] = 'bench_results', progress: bool = True) -> str:
    """Run ``paper_table`` or ``ablation``, write ``NAME.md`` / ``NAME.json`` into ``out_dir``, return the Markdown."""
    runners = {'paper_table': (paper_table, paper_table_markdown), 'ablation': (ablation, ablation_markdown)}
    if name not in runners:
        raise UserInputError(f'unknown suite {name!r}: choose one of {", ".join(runners)}.')
    run, markdown = runners[name]
    data = run(progress=progress)
    info = machine_info('cpu')
    md = markdown(data, info)
    out = Path(out_dir)
    _atomic_write(out / f'{name}.json', lambda f: json.dump(
        {'suite': name, 'machine': info, 'machine_label': machine_label(info), **data}, f, indent=2, default=str))
    _atomic_write(out / f'{name}.md', lambda f: f.write(md))
    return md


_ = _fmt  # re-exported formatting helper used by the tables
