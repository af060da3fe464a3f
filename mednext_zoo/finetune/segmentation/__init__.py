"""Segmentation fine-tuning: volumes in, per-organ Dice and HD95 out, the Synapse / ACDC protocols built in.

    from mednext_zoo.finetune.segmentation import SegConfig, fit, evaluate, predict
    fit(SegConfig(data='Dataset001/', out='runs/seg', model='medunext_base', epochs=100))
    evaluate('runs/seg', 'Dataset001/')          # 3D Dice / HD95, legacy and strict modes
    predict('runs/seg', ['new_scan.nii.gz'])     # NIfTI in the source geometry + PNG overlays

The data, preprocessing, metric, protocol, inference and report modules work without the training engine.
"""
from ...data.volumes import SegDataset, Volume, VolumeRecord, discover, load_volume
from ...metrics.segmentation import MODES, binary_metrics, evaluate_case, hd95, summarize
from .inference import predict_volume, save_nifti, save_overlays
from .losses import DiceCELoss, SoftDiceLoss
from .protocols import ACDC, LABEL_MAPS, PROTOCOLS, SYNAPSE, LabelMap, Protocol, get_label_map, grouped_kfold
from .report import dice_boxplot, markdown_table, write_case_csv

_TASK_NAMES = ('SegConfig', 'SegmentationTask', 'evaluate', 'fit', 'load_run_model', 'predict')


def __getattr__(name):  # the task module needs the training engine; import it on first use only
    if name in _TASK_NAMES:
        from . import task
        return getattr(task, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'SegDataset', 'Volume', 'VolumeRecord', 'discover', 'load_volume', 'predict_volume', 'save_nifti',
    'save_overlays', 'DiceCELoss', 'SoftDiceLoss', 'MODES', 'binary_metrics', 'evaluate_case', 'hd95', 'summarize',
    'ACDC', 'LABEL_MAPS', 'PROTOCOLS', 'SYNAPSE', 'LabelMap', 'Protocol', 'get_label_map', 'grouped_kfold',
    'dice_boxplot', 'markdown_table', 'write_case_csv', 'SegConfig', 'SegmentationTask', 'evaluate', 'fit',
    'load_run_model', 'predict',
]
