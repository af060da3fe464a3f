"""What every labelled-image reader returns: :class:`Sample` (one image) and :class:`DataSource` (a collection with
its class names). The ImageFolder / CSV readers (:mod:`.images`) and the MedMNIST reader (:mod:`.medmnist`) both build
them, so neither needs the other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = ['Sample', 'DataSource']


@dataclass(frozen=True)
class Sample:
    """One labelled 2D image (a file, or one slice of a NIfTI volume)."""
    path: str
    label: str
    patient_id: Optional[str] = None
    split: Optional[str] = None
    slice_index: Optional[int] = None
    item: Optional[str] = None  # one image of an array file (MedMNIST .npz): 'SPLIT/INDEX'

    @property
    def name(self) -> str:
        """``path``, ``path#slice_index`` for one slice of a NIfTI volume, or ``path#SPLIT/INDEX`` for one image of
        a MedMNIST file."""
        if self.item is not None:
            return f'{self.path}#{self.item}'
        return self.path if self.slice_index is None else f'{self.path}#{self.slice_index}'


@dataclass
class DataSource:
    """Samples found in a folder, manifest or MedMNIST file, their class names and widest channel count.

    ``classes`` are sorted for folders and manifests, in the file's index order for MedMNIST. ``task`` is
    ``'single-label'`` (one class per image) or ``'multi-label'`` (each ``Sample.label`` is the ``|``-joined names of
    the image's positive labels, ``''`` for none).
    """
    samples: List[Sample]
    classes: List[str]
    channels: int
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason) skipped as unreadable
    origin: str = ''
    task: str = 'single-label'
    meta: Dict[str, object] = field(default_factory=dict)  # e.g. MedMNIST: subset, size, licence

    @property
    def multi_label(self) -> bool:
        """True when each image has any number of labels (ChestMNIST) rather than one class."""
        return self.task == 'multi-label'

    @property
    def class_to_idx(self) -> Dict[str, int]:
        """Class name -> label index (position in the sorted ``classes``)."""
        return {c: i for i, c in enumerate(self.classes)}

    def subset(self, split: str) -> List[Sample]:
        """The samples assigned to ``split`` (``'train'``, ``'val'`` or ``'test'``), in order."""
        return [s for s in self.samples if s.split == split]
