"""The benchmark chart (issue 12, item 15): a title with machine / batch / precision, "up-left is better",
a legend entry for the outlined reference marker, and model labels that overlap neither each other nor the
markers. Drawn from the committed results (no measurement)."""
import copy
import itertools
import json
from pathlib import Path

import pytest

matplotlib = pytest.importorskip('matplotlib')
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text as mtext  # noqa: E402

from mednext_zoo.benchmark.report import LABEL_GID, bench_figure, load_results  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / 'benchmarks' / 'results'
# `mednext-zoo bench` outputs only (they carry 'meta'; benchmarks/results/real-data/results.json is a training table)
COMMITTED = sorted(p.parent for p in RESULTS.glob('*/results.json') if 'meta' in json.loads(p.read_text()))


def _label_boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_gid() == LABEL_GID]
    boxes = {}
    for t in labels:
        t.update_positions(renderer)
        boxes[t.get_text()] = mtext.Text.get_window_extent(t, renderer)  # the text alone, not its leader line
    return ax, labels, boxes


def _crowded(result):
    """The committed result plus near-duplicates of its crowded lower-right corner."""
    out = copy.deepcopy(result)
    extra = []
    for r in out.rows:
        if r.get('gflops', 0) > 3 and not r.get('error'):
            e = dict(r, name=r['name'] + '_x', gflops=r['gflops'] * 1.03, throughput_ips=r['throughput_ips'] * 1.08)
            extra.append(e)
    out.rows = out.rows + extra
    return out


@pytest.mark.parametrize('folder', COMMITTED, ids=lambda p: p.name)
@pytest.mark.parametrize('crowded', [False, True], ids=['committed', 'crowded'])
def test_chart_labels_do_not_overlap(folder, crowded):
    result = load_results(folder)
    if crowded:
        result = _crowded(result)
    fig = bench_figure(result)
    try:
        ax, labels, boxes = _label_boxes(fig)
        ok_rows = [r for r in result.rows if not r.get('error')]
        assert len(labels) == len(ok_rows)
        for (a, ba), (b, bb) in itertools.combinations(boxes.items(), 2):
            assert not ba.overlaps(bb), f'labels {a!r} and {b!r} overlap'
        axes_box = ax.get_window_extent()
        for name, bb in boxes.items():
            assert axes_box.x0 <= bb.x0 and bb.x1 <= axes_box.x1 and axes_box.y0 <= bb.y0 and bb.y1 <= axes_box.y1, \
                f'label {name!r} leaves the axes'
        # no label covers a marker (a scatter collection per model, its centre and radius in display space)
        px = fig.dpi / 72.0
        for coll in ax.collections:
            (cx, cy), = ax.transData.transform(coll.get_offsets())
            r = (coll.get_sizes()[0] / 3.14159) ** 0.5 * px
            for name, bb in boxes.items():
                nx, ny = min(max(cx, bb.x0), bb.x1), min(max(cy, bb.y0), bb.y1)  # nearest box point
                assert (nx - cx) ** 2 + (ny - cy) ** 2 >= (r - 1) ** 2, f'label {name!r} covers a marker'
    finally:
        plt.close(fig)


@pytest.mark.parametrize('folder', COMMITTED, ids=lambda p: p.name)
def test_chart_says_what_it_shows(folder):
    result = load_results(folder)
    fig = bench_figure(result)
    try:
        ax = fig.axes[0]
        title = ax.get_title()
        s = result.meta['settings']
        assert result.meta['machine_label'] in title
        assert f"batch {s['batch_size']}" in title and ('fp32' in title or 'AMP' in title)
        assert 'up and to the left is better' in title
        legend_texts = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
        assert any(result.meta['reference'] in t and 'reference' in t for t in legend_texts), legend_texts
        assert any('family' in t for t in legend_texts) and 'baselines' in legend_texts
    finally:
        plt.close(fig)

