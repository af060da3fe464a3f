"""The data layer, shared by every task, the benchmark and the tests (it imports nothing above it).

* :mod:`.io`        -- one 2D image from a file: Pillow formats, DICOM (HU, windows), a NIfTI slice;
* :mod:`.images`    -- labelled 2D images for classification: ImageFolder trees, CSV manifests, splits, datasets;
* :mod:`.medmnist`  -- MedMNIST v2 / MedMNIST+ ``.npz`` files with their official splits and class tables;
* :mod:`.volumes`   -- labelled volumes for segmentation: nnU-Net / MSD, TransUNet Synapse, ACDC, 2D folders, CSV;
* :mod:`.labels`    -- label maps (Synapse, BTCV, ACDC), label checks, patient ids, ``dataset.json``;
* :mod:`.synthetic` -- CT-like segmentation phantoms and a classification task generated on the fly from a seed,
  with fixed held-out splits (tests, demos, the training-efficiency benchmark).
* :mod:`.releases`  -- the paper's five public releases as downloaded: recognise a copy, check its contents.
"""
from .images import (
    SPLITS,
    DataSource,
    EpochSampler,
    ImageClassificationDataset,
    Sample,
    assign_splits,
    build_transforms,
    check_patient_splits,
    discover,
    hold_out_test,
    kfold_assignments,
    load_sample,
    multi_hot,
    read_csv_manifest,
    read_image_folder,
)
from .io import CT_WINDOWS, Window, load_image, parse_window, probe_image
from .labels import LABEL_MAPS, LabelMap, get_label_map
from .medmnist import MEDMNIST_2D, read_medmnist, resolve_npz
from .volumes import SegDataset, Volume, VolumeRecord, load_volume

__all__ = [
    'SPLITS', 'DataSource', 'EpochSampler', 'ImageClassificationDataset', 'Sample', 'assign_splits',
    'build_transforms', 'check_patient_splits', 'discover', 'hold_out_test', 'kfold_assignments', 'read_csv_manifest',
    'read_image_folder', 'CT_WINDOWS', 'Window', 'load_image', 'parse_window', 'probe_image', 'LABEL_MAPS', 'LabelMap',
    'get_label_map', 'SegDataset', 'Volume', 'VolumeRecord', 'load_volume', 'load_sample', 'multi_hot', 'MEDMNIST_2D',
    'read_medmnist', 'resolve_npz',
]
