"""Facts, the bottom floor of the package: what the paper's datasets and pretrained tags are, with no code path.

* ``HF_HUB_ORG``: the Hugging Face organisation that hosts the weights; every Hub id is
  ``f'{HF_HUB_ORG}/{arch}.{tag}'`` (:func:`hub_id`).
* ``DATASETS``: the facts about each paper dataset the cfgs need (labels, input, normalisation, licence, source)
  and that the model cards print (protocol, metric conventions).
* ``PRETRAINED_TAGS``: every ``arch.tag`` with its dataset and its *real* publication status. Nothing is
  published yet; a tag becomes ``published`` only when its weights are on the Hub.
* The published case lists of the Synapse and ACDC protocols (case / patient numbers) and the slice counts of
  TransUNet's Synapse training cases.

Everything else reads these tables: the models' pretrained cfgs and guarded loader (``models._pretrained``), the
hub layer, the data layer's release checks (``data.releases``), the segmentation protocols and the reproduction
protocols. This module imports nothing from the package.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = [
    'HF_HUB_ORG', 'PAPER_DOI', 'PAPER_CITATION', 'STATUS_NOT_PUBLISHED', 'LICENSE_NOTE', 'DATASETS',
    'PRETRAINED_TAGS', 'hub_id', 'weight_status', 'SYNAPSE_TRAIN_CASES', 'SYNAPSE_TEST_CASES',
    'SYNAPSE_TRAIN_SLICES', 'ACDC_TRAIN_PATIENTS', 'ACDC_VAL_PATIENTS', 'ACDC_TEST_PATIENTS',
]

HF_HUB_ORG = 'mednext-zoo'
"""Hugging Face organisation hosting every mednext-zoo checkpoint (``<org>/<arch>.<tag>``)."""

PAPER_DOI = '10.1371/journal.pone.0340108'
PAPER_CITATION = (
    'Xue Z, Pi P, Liu Z, Zeng Z, Sun Z (2026) MedNeXt for accurate medical image classification and '
    'segmentation: A lightweight transformer-style convolutional neural network. PLoS One 21(1): e0340108. '
    'https://doi.org/10.1371/journal.pone.0340108'
)

STATUS_NOT_PUBLISHED = 'not yet published'
"""The status of a tag whose weights are not on the Hub yet."""

LICENSE_NOTE = (
    'Licence of the weights = licence of the training data as set by the dataset authors; the licences of the '
    'paper\'s datasets could not all be verified (see license_note / docs/weights.md): read the dataset page\'s '
    'current terms before using or redistributing these weights.'
)

# Facts about the paper's datasets. Label order is the classifier / label-map index order: it is
# explicit on purpose (folder sort order differs between releases). Binary tasks: index 1 is the
# positive class.
DATASETS: Dict[str, Dict[str, Any]] = {
    'sarscov2_ct': dict(
        name='SARS-CoV-2 CT-Scan Dataset',
        task='classification',
        modality='CT (chest, axial slices as 8-bit PNG)',
        url='https://www.kaggle.com/datasets/plameneduardo/sarscov2-ctscan-dataset',
        doi='10.1101/2020.04.24.20078584',
        citation='Soares E, Angelov P, Biaso S, Froes MH, Abe DK. SARS-CoV-2 CT-scan dataset: A large dataset '
                 'of real patients CT scans for SARS-CoV-2 identification. medRxiv 2020.04.24.20078584.',
        license='other',
        license_note='not verified: read the licence shown on the Kaggle page before downloading (the dataset paper, '
                     'medRxiv 2020.04.24.20078584, states none)',
        label_names=('non_covid', 'covid'),
        label_descriptions={
            'non_covid': 'CT slice of a patient not infected by SARS-CoV-2',
            'covid': 'CT slice of a SARS-CoV-2 (COVID-19) positive patient',
        },
        positive_class='covid',
        size='2,482 slices: 1,252 COVID-19 positive, 1,230 negative (Hospital of Sao Paulo, Brazil)',
        in_chans=3,
        img_size=224,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        preprocessing='PNG slices as released (already windowed by the dataset authors, no HU values), '
                      'read as RGB, resized to the input size (224x224 in the paper), scaled to [0, 1], '
                      'normalised with the mean/std below.',
        split='The release has no patient ids, so it can only be split by image: slices of one patient '
              'may fall in both train and test, which makes test figures optimistic.',
        protocol='Paper recipe: 224x224 input, random crop + horizontal flip, AdamW (beta1 0.9), cosine '
                 'schedule, weight decay 0.05, 300 epochs.',
        metric_conventions='Binary task, positive class "covid" (index 1): precision, recall, F1 of the '
                           'positive class; accuracy; ROC AUC from the positive-class probability.',
        paper_results='Paper (Table 2): precision 100.00%, recall 96.75%, F1 98.35%, accuracy 98.39%, '
                      'AUC 0.9988.',
    ),
    'monkeypox_msld': dict(
        name='Monkeypox Skin Lesion Dataset (MSLD)',
        task='classification',
        modality='Dermatology photographs (RGB)',
        url='https://www.kaggle.com/datasets/nafin59/monkeypox-skin-lesion-dataset',
        doi='',
        citation='Ali SN, Ahmed MT, Paul J, Jahan T, Sani SMS, Noor N, Hasan T. Monkeypox skin lesion '
                 'detection using deep learning models: A feasibility study. arXiv:2207.03342 (2022).',
        license='other',
        license_note="not verified: the authors' readme (github.com/ShamsNafisaAli/Monkeypox-Skin-Lesion-Dataset) "
                     'shows a Creative Commons badge whose variant is not stated in text; read the licence on the '
                     'Kaggle page before downloading',
        label_names=('others', 'monkeypox'),
        label_descriptions={
            'others': 'Skin lesion of another disease (chickenpox, measles)',
            'monkeypox': 'Monkeypox (mpox) skin lesion',
        },
        positive_class='monkeypox',
        size='3,192 images (with the authors\' augmented copies): 1,428 monkeypox, 1,764 others; '
             '228 original images (102 monkeypox, 126 others)',
        in_chans=3,
        img_size=224,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        preprocessing='RGB photographs resized to the input size (224x224 in the paper), scaled to [0, 1], '
                      'normalised with the mean/std below.',
        split='The release ships augmented copies of the 228 original images: split by original image '
              '(every augmented copy with its source) or test figures measure memorisation.',
        protocol='Paper recipe: 224x224 input, random crop + horizontal flip, AdamW (beta1 0.9), cosine '
                 'schedule, weight decay 0.05, 300 epochs.',
        metric_conventions='Binary task, positive class "monkeypox" (index 1): precision, recall, F1 of the '
                           'positive class; accuracy; ROC AUC from the positive-class probability.',
        paper_results='Paper (Table 3): precision 98.85%, recall 97.74%, F1 98.29%, accuracy 98.12%, '
                      'AUC 0.9970.',
    ),
    'covid_ct_large': dict(
        name='Large COVID-19 CT scan slice dataset',
        task='classification',
        modality='CT (chest, axial slices as 8-bit PNG)',
        url='https://www.kaggle.com/datasets/maedemaftouni/large-covid19-ct-slice-dataset',
        doi='10.34740/kaggle/dsv/2321803',
        citation='Maftouni M, Law ACC, Shen B, Grado ZJK, Zhou Y, Yazdi NA. A robust ensemble-deep learning '
                 'model for COVID-19 diagnosis based on an integrated CT scan images database. IISE Annual '
                 'Conference and Expo 2021.',
        license='other',
        license_note='not verified: read the licence shown on the Kaggle page before downloading; the slices are '
                     'curated from 7 public datasets, each with its own terms',
        label_names=('non_covid', 'covid'),
        label_descriptions={
            'non_covid': 'Normal CT slice (no COVID-19)',
            'covid': 'CT slice of a COVID-19 patient',
        },
        positive_class='covid',
        size='14,486 slices: 7,593 COVID-19 (466 patients), 6,893 normal (604 patients); the release\'s '
             'CAP (community-acquired pneumonia) class is not used',
        in_chans=3,
        img_size=224,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        preprocessing='PNG slices as released (already windowed, no HU values), read as RGB, resized to '
                      'the input size (224x224 in the paper), scaled to [0, 1], normalised with the mean/std below.',
        split='Split by patient (no patient in two splits), checked by the training code.',
        protocol='Paper recipe: 224x224 input, random crop + horizontal flip, AdamW (beta1 0.9), cosine '
                 'schedule, weight decay 0.05, 300 epochs.',
        metric_conventions='Binary task, positive class "covid" (index 1): precision, recall, F1 of the '
                           'positive class; accuracy; ROC AUC from the positive-class probability.',
        paper_results='Paper (Table 4): recall 99.42%, F1 98.80%, accuracy 98.85%, AUC 0.9972.',
    ),
    'synapse': dict(
        name='Synapse multi-organ CT (MICCAI 2015 BTCV)',
        task='segmentation',
        modality='Contrast-enhanced abdominal CT (axial slices)',
        url='https://www.synapse.org/Synapse:syn3193805/files/',
        doi='10.7303/syn3193805',
        citation='Landman B, Xu Z, Iglesias JE, Styner M, Langerak TR, Klein A. MICCAI multi-atlas labeling '
                 'beyond the cranial vault - workshop and challenge (2015). doi:10.7303/syn3193805.',
        license='other',
        license_note="not verified: the raw BTCV data need a Synapse account and its terms of use; TransUNet's "
                     'preprocessed copy is shared for research use and not to be redistributed (TransUNet '
                     'datasets/README)',
        label_names=('background', 'aorta', 'gallbladder', 'left kidney', 'right kidney', 'liver',
                     'pancreas', 'spleen', 'stomach'),
        label_descriptions={},
        positive_class=None,
        size='30 CT volumes; TransUNet split 18 train (2,211 axial slices) / 12 test',
        in_chans=1,
        img_size=224,
        mean=(0.0,),
        std=(1.0,),
        preprocessing='CT window: HU clipped to [-125, 275] and each volume scaled to [0, 1] (as in TransUNet\'s '
                      'released files); every axial slice resized to the input size (224x224 in the paper; 1 '
                      'channel); no further normalisation (mean 0, std 1), as in TransUNet\'s data loader.',
        split='TransUNet split. Test: case0001, 0002, 0003, 0004, 0008, 0022, 0025, 0029, 0032, 0035, 0036, '
              '0038; train: the other 18 cases.',
        protocol='0.5 CE + 0.5 soft Dice over 9 classes, random rot90 + flip / rotation; Adam, batch 12, '
                 '100 epochs. Inference slice by slice at 224x224, argmax, resized back (nearest), stacked '
                 'to 3D.',
        metric_conventions='Per organ per test volume in 3D: Dice (DSC) and HD95. Legacy protocol (as in '
                           'published tables): HD95 in voxels, empty prediction scores DSC 0 / HD95 0; mean '
                           'over 8 organs of the mean over 12 cases. The strict protocol (HD95 in mm, '
                           'worst-case distance for a missed organ) is reported separately and named.',
        paper_results='Paper (Table 5): mean DSC 79.45%, mean HD95 23.96.',
    ),
    'acdc': dict(
        name='ACDC cardiac cine-MRI',
        task='segmentation',
        modality='Cine MRI (short axis, ED and ES frames)',
        url='https://www.creatis.insa-lyon.fr/Challenge/acdc/databases.html',
        doi='10.1109/TMI.2018.2837502',
        citation='Bernard O, et al. Deep learning techniques for automatic MRI cardiac multi-structures '
                 'segmentation and diagnosis: is the problem solved? IEEE TMI 37(11):2514-2525 (2018).',
        license='other',
        license_note="not verified: any use must cite Bernard et al., IEEE TMI 2018 (ACDC pages); the database page's "
                     'licence text could not be checked (a third-party mirror lists cc-by-nc-sa-4.0)',
        label_names=('background', 'right ventricle', 'myocardium', 'left ventricle'),
        label_descriptions={
            'right ventricle': 'right ventricle cavity (RV)',
            'myocardium': 'left-ventricular myocardium (Myo)',
            'left ventricle': 'left ventricle cavity (LV)',
        },
        positive_class=None,
        size='100 patients x (ED, ES); TransUNet-lineage split 70 / 10 / 20 patients',
        in_chans=1,
        img_size=224,
        mean=(0.0,),
        std=(1.0,),
        preprocessing='Each volume min-max scaled to [0, 1]; every short-axis slice resized to the input '
                      'size (224x224 in the paper; 1 channel); no further normalisation (mean 0, std 1). The '
                      'paper does not state its ACDC intensity step; this one is mednext-zoo\'s.',
        split='Test patients 002, 003, 008, 009, 012, 014, 017, 024, 042, 048, 049, 053, 055, 064, 067, 079, '
              '081, 088, 092, 095 (ED + ES = 40 volumes); validation 019, 021, 029, 033, 041, 050, 061, 071, '
              '076, 080; train the other 70.',
        protocol='Same recipe as Synapse (0.5 CE + 0.5 Dice; Adam, batch 12, 100 epochs), slice-wise '
                 'inference, per-volume metrics.',
        metric_conventions='Per structure per test volume in 3D: DSC for RV, Myo, LV and their mean.',
        paper_results='Paper (Table 6): mean DSC 91.28%.',
    ),
}

# Every pretrained tag, its dataset and its real status. Publishing a tag = uploading it with
# ``mednext-zoo push`` and then setting its status here to 'published' (with the Hub revision).
PRETRAINED_TAGS: Dict[str, Dict[str, Any]] = {
    'mednext_base.sarscov2_ct': dict(dataset='sarscov2_ct', status=STATUS_NOT_PUBLISHED, revision=None),
    'mednext_base.monkeypox_msld': dict(dataset='monkeypox_msld', status=STATUS_NOT_PUBLISHED, revision=None),
    'mednext_base.covid_ct_large': dict(dataset='covid_ct_large', status=STATUS_NOT_PUBLISHED, revision=None),
    'medunext_base.synapse': dict(dataset='synapse', status=STATUS_NOT_PUBLISHED, revision=None),
    'medunext_base.acdc': dict(dataset='acdc', status=STATUS_NOT_PUBLISHED, revision=None),
}


def hub_id(arch: str, tag: str) -> str:
    """Hugging Face repo id of ``arch.tag``: ``'<HF_HUB_ORG>/<arch>.<tag>'``."""
    return f'{HF_HUB_ORG}/{arch}.{tag}'


def weight_status(name: str) -> str:
    """Publication status of ``arch.tag`` (``'not yet published'``, ``'published'``, or ``'no weights'``)."""
    entry = PRETRAINED_TAGS.get(name)
    return entry['status'] if entry else 'no weights'


# ---------------------------------------------------------------- published case lists
# Synapse (TransUNet lists/lists_Synapse): case numbers of the 18 training and 12 test volumes.
SYNAPSE_TEST_CASES: Tuple[int, ...] = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
SYNAPSE_TRAIN_CASES: Tuple[int, ...] = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
# Training slices per case of TransUNet's lists/lists_Synapse/train.txt (2,211 in all).
SYNAPSE_TRAIN_SLICES: Dict[int, int] = {
    5: 117, 6: 131, 7: 163, 9: 149, 10: 148, 21: 143, 23: 96, 24: 124, 26: 131, 27: 88, 28: 89, 30: 153,
    31: 93, 33: 104, 34: 98, 37: 99, 39: 90, 40: 195,
}
# ACDC (TransUNet-lineage lists): patient numbers, each patient with its ED and ES volumes.
ACDC_TEST_PATIENTS: Tuple[int, ...] = (2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81, 88, 92, 95)
ACDC_VAL_PATIENTS: Tuple[int, ...] = (19, 21, 29, 33, 41, 50, 61, 71, 76, 80)
ACDC_TRAIN_PATIENTS: Tuple[int, ...] = tuple(i for i in range(1, 101)
                                             if i not in ACDC_TEST_PATIENTS + ACDC_VAL_PATIENTS)
