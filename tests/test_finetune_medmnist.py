"""finetune / evaluate / predict on MedMNIST .npz files: official splits, multi-label, held-out scoring (issue 21)."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from mednext_zoo.errors import UserInputError
from mednext_zoo.finetune import ClassificationConfig, evaluate, fit, predict
from mednext_zoo.finetune.classification.metrics import multilabel_point_metrics, multilabel_report

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'pneumoniamnist_subset.npz')


def _chest(path, n=(24, 8, 8), seed=0):
    """A ChestMNIST-shaped multi-label file (14 labels); labels 0 and 1 follow the image brightness."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in zip(('train', 'val', 'test'), n):
        y = rng.integers(0, 2, (k, 14))
        x = rng.integers(0, 60, (k, 28, 28)) + (y[:, 0] * 120)[:, None, None] + (y[:, 1] * 60)[:, None, None]
        arrays[f'{split}_images'] = x.clip(0, 255).astype(np.uint8)
        arrays[f'{split}_labels'] = y
    np.savez_compressed(path, **arrays)
    return str(path)


def test_multilabel_metrics_follow_the_medmnist_evaluator():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.4, 0.6], [0.7, 0.3], [0.1, 0.8]])
    m = multilabel_point_metrics(y, p)
    # MedMNIST: ACC = mean over labels of the accuracy at 0.5; AUC = mean over labels of the ROC AUC
    assert m['accuracy'] == pytest.approx((1.0 + 0.5) / 2)
    assert m['auc'] == pytest.approx((1.0 + 0.5) / 2)
    rep = multilabel_report(torch.logit(torch.tensor(p)), torch.tensor(y), ['a', 'b'], n_bootstrap=20)
    assert rep['averaging'] == 'multi-label' and rep['accuracy'] == pytest.approx(0.75)
    assert set(rep['per_class']) == {'a', 'b'} and rep['ci95']['auc'] is not None


@pytest.mark.slow
def test_multilabel_run_trains_with_bce_and_scores_per_label(tmp_path):
    data = _chest(tmp_path / 'chestmnist.npz')
    res = fit(ClassificationConfig(model='mednext_tiny', data=data, out=str(tmp_path / 'run'), epochs=1, img_size=32,
                                   batch_size=8, progress=False, n_bootstrap=10, in_chans=1))
    assert res['averaging'] == 'multi-label' and res['headline_split'] == 'test'
    assert res['sizes'] == {'train': 24, 'val': 8, 'test': 8}
    assert len(res['test']['per_class']) == 14 and 'confusion_matrix' not in res['test']
    assert 'official' in res['split_by']
    cfg = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert cfg['multi_label'] is True and cfg['data_source']['subset'] == 'chestmnist'
    rows = predict(str(tmp_path / 'run'), [f'{data}#test/3'], out=str(tmp_path / 'pred'))
    assert len(rows) == 1 and rows[0]['item'] == 'test/3'
    probs = [rows[0][f'p_{c}'] for c in cfg['classes']]
    assert all(0 <= p <= 1 for p in probs) and abs(sum(probs) - 1) > 1e-3  # sigmoids, not a softmax
    assert set(filter(None, rows[0]['prediction'].split('|'))) == {c for c, p in zip(cfg['classes'], probs) if p >= .5}
    with pytest.raises(UserInputError, match='sampler'):
        fit(ClassificationConfig(model='mednext_tiny', data=data, out=str(tmp_path / 'r2'), imbalance='sampler'))


@pytest.mark.slow
def test_npz_run_records_official_splits_and_evaluate_keeps_to_held_out_images(tmp_path):
    run = tmp_path / 'run'
    res = fit(ClassificationConfig(model='resnet18', data=FIXTURE, labels='normal,pneumonia', out=str(run), epochs=1,
                                   img_size=32, batch_size=32, progress=False, n_bootstrap=10, in_chans=1))
    assert res['sizes'] == {'train': 300, 'val': 100, 'test': 200}
    with open(run / 'splits.csv') as f:
        rows = list(csv.DictReader(f))
    assert rows[0]['item'] == 'train/0' and {r['split'] for r in rows} == {'train', 'val', 'test'}
    ev = evaluate(str(run), FIXTURE, out=str(tmp_path / 'ev'), n_bootstrap=10, progress=False)
    assert ev['split'] == 'test' and ev['n'] == 200  # the official test split by default
    assert ev['accuracy'] == pytest.approx(res['test']['accuracy'])
    with pytest.raises(UserInputError, match='All 300 images'):
        evaluate(str(run), FIXTURE, split='train', progress=False)
    loud = evaluate(str(run), FIXTURE, split='val', include_training_data=True, n_bootstrap=0, progress=False)
    assert loud['training_overlap']['in_training_data'] == 100


def test_same_subset_at_another_size_is_training_data(tmp_path, capsys):
    from mednext_zoo.data.medmnist import read_medmnist
    from mednext_zoo.finetune.classification.task import _check_same_subset
    path = tmp_path / 'pneumoniamnist_28.npz'
    with np.load(FIXTURE) as z:
        np.savez(path, **{k: z[k] for k in z.files})
    src = read_medmnist(path)
    rc = {'data_source': {'subset': 'pneumoniamnist', 'size': 64}}  # the file holds 28 px images
    _check_same_subset(rc, src, 'test', False)  # the test split is held out at every size
    with pytest.raises(UserInputError, match='resized'):
        _check_same_subset(rc, src, 'train', False)
    _check_same_subset(rc, src, None, True)
    assert 'optimistic' in capsys.readouterr().out
