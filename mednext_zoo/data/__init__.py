"""Reading labelled 2D medical images: files (Pillow, DICOM, NIfTI), manifests, splits and datasets."""
from .datasets import (
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
    read_csv_manifest,
    read_image_folder,
)
from .io import CT_WINDOWS, Window, load_image, parse_window, probe_image

__all__ = [
    'SPLITS', 'DataSource', 'EpochSampler', 'ImageClassificationDataset', 'Sample', 'assign_splits',
    'build_transforms', 'check_patient_splits', 'discover', 'hold_out_test', 'kfold_assignments', 'read_csv_manifest',
    'read_image_folder', 'CT_WINDOWS', 'Window', 'load_image', 'parse_window', 'probe_image',
]
