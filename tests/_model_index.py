"""Validator for the ``model-index`` block of a model card's YAML header (the Hub's evaluation results)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Union

import yaml
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import EvalResult, model_index_to_eval_results

TASK_TYPES = ('image-classification', 'image-segmentation')


def check_model_index(card: Union[str, Path]) -> List[EvalResult]:
    """Parse ``card`` (a README.md) and assert its ``model-index`` is well-formed; return its results.

    Checks what the Hub needs to show a results table: a model name; per result a task type, a dataset name and
    type, and metrics each with a type, a name and a finite numeric value; and that huggingface_hub's own parser
    and ``ModelCard`` read the block back to the same results.
    """
    path = Path(card)
    text = path.read_text()
    assert text.startswith('---\n'), 'no YAML front matter'
    header = yaml.safe_load(text.split('---\n', 2)[1])
    assert header == metadata_load(path)
    index = header['model-index']
    assert isinstance(index, list) and len(index) == 1, index
    entry = index[0]
    assert isinstance(entry.get('name'), str) and entry['name'], 'model-index needs a model name'
    assert entry['results'], 'model-index without results'
    for result in entry['results']:
        assert result['task']['type'] in TASK_TYPES, result['task']
        assert result['dataset']['name'] and result['dataset']['type'], result['dataset']
        assert result['metrics'], 'a result without metrics'
        for metric in result['metrics']:
            assert metric['type'] and metric['name'], metric
            value = metric['value']
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), metric
    name, results = model_index_to_eval_results(index)
    assert name == entry['name']
    card_results = ModelCard.load(path).data.eval_results
    assert [(r.metric_type, r.metric_value) for r in card_results] == [(r.metric_type, r.metric_value)
                                                                       for r in results]
    return results


def metric_values(results: List[EvalResult]) -> Dict[str, float]:
    """``{metric name: value}`` of parsed results."""
    return {r.metric_name: r.metric_value for r in results}
