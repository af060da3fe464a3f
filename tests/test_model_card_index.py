"""Model cards carry measured metrics in a Hub ``model-index`` block that stays well-formed."""
from __future__ import annotations

import math

import pytest
import timm
import torch

import mednext_zoo  # noqa: F401
from mednext_zoo import hub
from mednext_zoo.hub.card import eval_results
from tests._model_index import check_model_index, metric_values


def _model(name='mednext_tiny', **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, img_size=64, **kwargs).eval()


def test_classification_card_has_model_index(tmp_path):
    metrics = {'accuracy': 0.9125, 'auc': {'value': 0.95, 'ci': (0.9, 0.99)}, 'f1': 0.875}
    out = hub.save_pretrained(_model(num_classes=2), tmp_path, dataset='sarscov2_ct', metrics=metrics, flops=False)
    results = check_model_index(out / 'README.md')
    assert metric_values(results) == {'accuracy': 0.9125, 'auc': 0.95, 'f1': 0.875}
    assert [r.metric_type for r in results] == ['accuracy', 'roc_auc', 'f1']
    r = results[0]
    assert (r.task_type, r.dataset_type, r.dataset_name) == ('image-classification', 'sarscov2_ct',
                                                             'SARS-CoV-2 CT-Scan Dataset')
    assert '| accuracy | 0.9125 |' in (out / 'README.md').read_text()  # the body table is unchanged


def test_segmentation_card_with_a_custom_dataset(tmp_path):
    headline = {'dice_legacy': 0.8123, 'hd95_legacy_voxels': 12.5, 'dice_strict': 0.8011, 'hd95_strict_mm': 20.25,
                'not measured': float('nan')}
    dataset = {'name': 'Dataset042 Kidney CT', 'task': 'segmentation', 'label_names': ['background', 'kidney']}
    out = hub.save_pretrained(_model('medunext_tiny', num_classes=2), tmp_path, dataset=dataset, metrics=headline,
                              flops=False)
    results = check_model_index(out / 'README.md')
    assert metric_values(results) == {'dice_legacy': 0.8123, 'hd95_legacy_voxels': 12.5, 'dice_strict': 0.8011,
                                      'hd95_strict_mm': 20.25}  # NaN left out
    assert [r.metric_type for r in results] == ['dice', 'hd95', 'dice', 'hd95']
    assert {r.task_type for r in results} == {'image-segmentation'}
    assert {r.dataset_type for r in results} == {'dataset042-kidney-ct'}


def test_card_without_metrics_has_no_model_index(tmp_path):
    out = hub.save_pretrained(_model(num_classes=2), tmp_path, dataset='sarscov2_ct', flops=False)
    assert 'model-index' not in (out / 'README.md').read_text().split('---\n', 2)[1]


@pytest.mark.parametrize('value', [None, 'n/a', float('inf'), True])
def test_non_numeric_entries_are_left_out(value):
    results = eval_results({'x': value, 'y': {'value': value}, 'accuracy': 1}, task='classification',
                           dataset_name='d', dataset_type='d')
    assert [(r.metric_name, r.metric_value) for r in results] == [('accuracy', 1.0)]
    assert not math.isnan(results[0].metric_value)
