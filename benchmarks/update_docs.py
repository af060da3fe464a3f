"""Copy the committed results into docs/benchmarks.md (between its RESULTS markers) and docs/img/.

    python benchmarks/update_docs.py [--replot] [RESULT_DIR ...]   # default: every benchmarks/results/*/results.md

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
    text = DOC.read_text()
    block = BEGIN + '\n' + '\n'.join(parts).rstrip() + '\n' + END
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + '\n\n' + block + '\n'
    DOC.write_text(text)
    print(f'updated {DOC}')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('dirs', nargs='*', type=Path, help='result folders (default: every benchmarks/results/*/)')
    p.add_argument('--replot', action='store_true', help='redraw each results.png from its results.json first')
    a = p.parse_args()
    main(a.dirs or sorted(q.parent for q in RESULTS.glob('*/results.md')), a.replot)
