"""Each pretrained tag's protocol, as data: release, label order, split rule, input, intensities, recipe, seeds,
and the paper's figures to print next to the measured ones.

Nothing here is a code path: :mod:`.runner` reads these tables. The recipe lists only what the paper states (or
what the tag fixes); everything else comes from the defaults of ``ClassificationConfig`` / ``SegConfig``, so a change
of those defaults reaches the reproduction too. See ``docs/weights.md`` for the source of every entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Tuple

from ..catalog import DATASETS, PRETRAINED_TAGS
from ..errors import UserInputError

__all__ = ['SplitRule', 'TagProtocol', 'PROTOCOLS', 'get_tag_protocol']


@dataclass(frozen=True)
class SplitRule:
    """How a tag's data are split.

    ``kind='fractions'``: a random split stratified by label, with ``group_by`` units (patients, source images,
    single files) never in two splits, fixed by ``seed``. ``kind='lists'``: the published case lists of the
    segmentation protocol ``lists`` (``mednext_zoo.finetune.segmentation.protocols``).
    """
    kind: str
    fractions: Tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, val, test
    group_by: str = 'image'
    seed: int = 0
    lists: str = ''
    train_kind: str = 'original'  # MSLD: train / val on the authors' augmented copies ...
    test_kind: str = 'original'  # ... and test on original images only
    source: str = ''


@dataclass(frozen=True)
class TagProtocol:
    """Everything that makes a reproduction of ``tag`` the same whoever runs it."""
    tag: str
    release: str  # key of mednext_zoo.data.releases.RELEASES (= DATASETS key)
    task: str  # 'classification' | 'segmentation'
    split: SplitRule
    img_size: int
    in_chans: int
    intensity: str  # what the images go through before the network (text for the plan and the card)
    recipe: Mapping[str, object]  # overrides of ClassificationConfig / SegConfig fields (the rest are their defaults)
    recipe_source: str
    paper: Mapping[str, float]  # metric -> the paper's figure (fractions, like the measured ones)
    paper_source: str
    seeds: Tuple[int, ...] = (0, 1, 2)
    notes: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def arch(self) -> str:
        """The architecture of the tag (``'mednext_base'`` of ``'mednext_base.sarscov2_ct'``)."""
        return self.tag.split('.', 1)[0]

    @property
    def dataset(self) -> Dict[str, object]:
        """The weight registry's ``DATASETS`` entry of the tag's release."""
        return DATASETS[self.release]

    @property
    def label_order(self) -> Tuple[str, ...]:
        """Output index order: the tag's, never a folder sort order."""
        return tuple(self.dataset['label_names'])


_CLS_RECIPE_SOURCE = ('Paper ("Experimental settings"): AdamW, initial momentum 0.9, cosine schedule, weight decay '
                      '0.05, 300 epochs; random cropping + horizontal flip at 224x224. Its learning rate, batch size '
                      'and split ratio did not survive in the text: those are ClassificationConfig\'s defaults and our '
                      '70/10/20 split.')
_SEG_RECIPE_SOURCE = ('Paper ("Experimental settings"): Adam, batch 12, 100 epochs, trained from scratch; its learning '
                      'rate did not survive in the text. Loss, augmentation, schedule and learning rate are '
                      'SegConfig\'s defaults (docs/segmentation.md).')
_PNG_SLICES = 'PNG slices as released (already windowed), RGB, resized to the input size (224x224), ImageNet mean / std'
_CLS_SPLIT_SOURCE = 'The paper does not state its split; 70 / 10 / 20 stratified by class is ours.'

PROTOCOLS: Dict[str, TagProtocol] = {
    'mednext_base.sarscov2_ct': TagProtocol(
        tag='mednext_base.sarscov2_ct', release='sarscov2_ct', task='classification',
        split=SplitRule('fractions', group_by='image (no patient ids; identical images kept together)',
                        source=_CLS_SPLIT_SOURCE),
        img_size=224, in_chans=3,
        intensity=_PNG_SLICES,
        recipe={'epochs': 300, 'weight_decay': 0.05}, recipe_source=_CLS_RECIPE_SOURCE,
        paper={'precision': 1.0, 'recall': 0.9675, 'f1': 0.9835, 'accuracy': 0.9839, 'auc': 0.9988},
        paper_source='Table 2',
        notes=('No patient ids in the release: the split is by image, so test figures are optimistic.',),
    ),
    'mednext_base.monkeypox_msld': TagProtocol(
        tag='mednext_base.monkeypox_msld', release='monkeypox_msld', task='classification',
        split=SplitRule('fractions', group_by='patient (file-name prefix; augmented copies with their original)',
                        train_kind='augmented', test_kind='original',
                        source=_CLS_SPLIT_SOURCE + ' As in the authors\' own folds, train / val use the augmented '
                                                   'copies and test the original images of held-out patients.'),
        img_size=224, in_chans=3,
        intensity='RGB photographs resized to the input size (224x224), ImageNet mean / std',
        recipe={'epochs': 300, 'weight_decay': 0.05}, recipe_source=_CLS_RECIPE_SOURCE,
        paper={'precision': 0.9885, 'recall': 0.9774, 'f1': 0.9829, 'accuracy': 0.9812, 'auc': 0.9970},
        paper_source='Table 3 (accuracy from the abstract)',
    ),
    'mednext_base.covid_ct_large': TagProtocol(
        tag='mednext_base.covid_ct_large', release='covid_ct_large', task='classification',
        split=SplitRule('fractions', group_by='patient ("Patient ID" of the metadata CSVs)', source=_CLS_SPLIT_SOURCE),
        img_size=224, in_chans=3,
        intensity=_PNG_SLICES,
        recipe={'epochs': 300, 'weight_decay': 0.05}, recipe_source=_CLS_RECIPE_SOURCE,
        paper={'recall': 0.9942, 'f1': 0.9880, 'accuracy': 0.9885, 'auc': 0.9972},
        paper_source='Table 4 (the abstract gives accuracy 98.58 %, the text 98.85 %)',
    ),
    'medunext_base.synapse': TagProtocol(
        tag='medunext_base.synapse', release='synapse', task='segmentation',
        split=SplitRule('lists', group_by='case', lists='synapse',
                        source='TransUNet lists/lists_Synapse: 18 train cases (train.txt), 12 test (test_vol.txt)'),
        img_size=224, in_chans=1,
        intensity='TransUNet files as released (HU clipped to [-125, 275], each volume scaled to [0, 1]); slices '
                  'resized to the input size (224x224); no further normalisation',
        recipe={'epochs': 100, 'batch_size': 12, 'opt': 'adam', 'intensity': 'none'},
        recipe_source=_SEG_RECIPE_SOURCE,
        paper={'dice_legacy': 0.7945, 'hd95_legacy': 23.96},
        paper_source='Table 5 (HD95 printed as "mm"; the TransUNet evaluation it follows computes it in voxels)',
    ),
    'medunext_base.acdc': TagProtocol(
        tag='medunext_base.acdc', release='acdc', task='segmentation',
        split=SplitRule('lists', group_by='patient (ED and ES together)', lists='acdc',
                        source='TransUNet-lineage ACDC lists (70 / 10 / 20 patients), as in '
                               'github.com/sotiraslab/AgileFormer lists/lists_ACDC'),
        img_size=224, in_chans=1,
        intensity='each volume min-max scaled to [0, 1]; slices resized to the input size (224x224); no further '
                  'normalisation (the TransUNet lineage\'s ACDC intensity step is not documented; this is ours)',
        recipe={'epochs': 100, 'batch_size': 12, 'opt': 'adam', 'intensity': 'minmax'},
        recipe_source=_SEG_RECIPE_SOURCE,
        paper={'dice_legacy': 0.9128}, paper_source='Table 6',
    ),
}

assert set(PROTOCOLS) == set(PRETRAINED_TAGS)  # every tag has a protocol


def get_tag_protocol(tag: str) -> TagProtocol:
    """The :class:`TagProtocol` of ``tag`` (e.g. ``'mednext_base.sarscov2_ct'``); raises UserInputError naming the known
    tags."""
    if tag not in PROTOCOLS:
        raise UserInputError(f'Unknown tag {tag!r}; choose one of {", ".join(PROTOCOLS)}.')
    return PROTOCOLS[tag]
