"""Copy the committed results into docs/benchmarks.md (between its RESULTS / TRAIN markers) and docs/img/.

    python benchmarks/update_docs.py [--replot] [RESULT_DIR ...]

Default: every ``benchmarks/results/*/results.md`` and every ``benchmarks/results/train-*/<task>/train.md``.

Run it after committing a new harness or suite result so the docs show the latest tables and charts.
``--replot`` first redraws each ``results.png`` from its committed ``results.json`` (no re-measurement), for
when the chart code changed.
"""
import argparse
import shutil
from pathlib import Path

from _common import RESULTS, ROOT

DOC = ROOT / 'docs' / 'benchmarks.md'
IMG = ROOT / 'docs' / 'img'
BEGIN, END = '<!-- RESULTS:BEGIN (written by benchmarks/update_docs.py) -->', '<!-- RESULTS:END -->'
TRAIN_BEGIN, TRAIN_END = '<!-- TRAIN:BEGIN (written by benchmarks/update_docs.py) -->', '<!-- TRAIN:END -->'


def _demote(md: str, levels: int = 3) -> str:
    """Headings ``levels`` down, so a result's '# title' nests under the docs section."""
    return '\n'.join('#' * levels + line if line.startswith('#') else line for line in md.splitlines()).strip()


def main(dirs, replot: bool = False) -> None:
    parts = ['## Latest committed results', '']
    for d in dirs:
        if replot and (d / 'results.json').exists():
            from mednext_zoo.benchmark.report import load_results, plot_results
            plot_results(load_results(d), d / 'results.png')
        md = (d / 'results.md').read_text()
        parts += [f'### `benchmarks/results/{d.name}/`', '', _demote(md), '']
        if (d / 'results.png').exists():
            IMG.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(d / 'results.png', IMG / f'bench-{d.name}.png')
            parts += [f'![throughput vs GFLOPs, {d.name}](img/bench-{d.name}.png)', '']
    for suite in ('paper_table', 'ablation'):
        if (RESULTS / f'{suite}.md').exists():
            md = (RESULTS / f'{suite}.md').read_text()
            parts += [f'### `benchmarks/results/{suite}.md`', '', _demote(md), '']
    text = _replace_block(DOC.read_text(), BEGIN, END, parts)
    train = sorted(RESULTS.glob('train-*/*/train.md'))
    if train:
        tparts = []
        for md_path in train:
            d = md_path.parent
            rel = f'{d.parent.name}/{d.name}'
            tparts += [f'#### `benchmarks/results/{rel}/`', '', _demote(md_path.read_text(), 3), '']
            if (d / 'train.png').exists():
                IMG.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(d / 'train.png', IMG / f'{d.parent.name}-{d.name}.png')
                tparts += [f'![held-out quality vs steps and seconds, {rel}](img/{d.parent.name}-{d.name}.png)', '']
        text = _replace_block(text, TRAIN_BEGIN, TRAIN_END, tparts)
    DOC.write_text(text)
    print(f'updated {DOC}')


def _replace_block(text: str, begin: str, end: str, parts) -> str:
    block = begin + '\n' + '\n'.join(parts).rstrip() + '\n' + end
    if begin in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip() + '\n\n' + block + '\n'


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('dirs', nargs='*', type=Path, help='result folders (default: every benchmarks/results/*/)')
    p.add_argument('--replot', action='store_true', help='redraw each results.png from its results.json first')
    a = p.parse_args()
    main(a.dirs or sorted(q.parent for q in RESULTS.glob('*/results.md')), a.replot)
