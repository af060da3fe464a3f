"""The public releases behind the paper's five datasets: recognise a downloaded copy, then check its contents.

Each :class:`Release` is data: the tree as downloaded, the folder names of its classes, the counts the dataset
authors published, where to download it and the licence a user accepts by downloading, each with the source it
was checked against (see ``docs/weights.md``). Two steps use it:

* :func:`recognise` finds the release under a folder (a Kaggle download nests its folders, e.g.
  ``curated_data/curated_data/2COVID``) and lists its labelled images (classification, each with the tag's label
  name and the group that must stay in one split: patient, source image or the file) or its cases
  (segmentation). A wrong or partial tree raises :class:`ReleaseLayoutError`, which shows the expected tree, what
  was found, where to download and the licence.
* :func:`check_contents` reads every file once: unreadable files, counts against the published totals, images
  with the same pixels under two labels, and duplicates that tie two groups together (they are then merged so
  that no copy of an image straddles two splits). Results are cached by path, size and modification time.

Nothing here knows about training; ``mednext_zoo.reproduce`` turns a recognised release into a run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .._atomic import atomic_write_text
from ..catalog import DATASETS, SYNAPSE_TEST_CASES, SYNAPSE_TRAIN_SLICES
from ..errors import UserInputError
from .io import PIL_EXTS
from .volumes import read_info_cfg

__all__ = [
    'Release', 'Item', 'Case', 'Recognised', 'ContentReport', 'RELEASES', 'SYNAPSE_TRAIN_SLICES',
    'ReleaseLayoutError', 'ReleaseContentError', 'recognise', 'check_contents', 'get_release',
]


class ReleaseLayoutError(UserInputError):
    """The folder is not (a complete copy of) the expected release."""


class ReleaseContentError(UserInputError):
    """The release is there, but its contents differ from what was published (counts, unreadable files, ...)."""


@dataclass(frozen=True)
class Release:
    """How one public dataset is distributed (every field is a documented fact, with ``sources``)."""
    key: str  # the DATASETS key of mednext_zoo.catalog
    name: str
    task: str  # 'classification' | 'segmentation'
    download: str  # the page to download from
    how: str  # how to get it, in one line
    licence_source: str  # where the licence statement was read, or why it could not be checked
    tree: str  # the expected tree, as a user sees it after unpacking
    published: Mapping[str, int]  # label (or 'label/kind', 'label patients') -> count the authors published
    sources: Tuple[str, ...]  # where the layout facts were checked
    class_dirs: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)  # tag label -> folder names
    notes: Tuple[str, ...] = ()

    @property
    def licence(self) -> str:
        """The terms a user accepts by downloading (``DATASETS[key]['license_note']``; one place for it)."""
        return str(DATASETS[self.key]['license_note'])


@dataclass(frozen=True)
class Item:
    """One labelled 2D image of a classification release."""
    path: str
    label: str  # the tag's label name (never the folder name)
    group: str  # what must stay in one split: the patient, the source image, or the file itself
    kind: str = 'original'  # 'original' | 'augmented' (MSLD ships augmented copies of its originals)
    patient: Optional[str] = None  # as the release gives it (None where it has no patient ids)


@dataclass(frozen=True)
class Case:
    """One case (volume) of a segmentation release."""
    case_id: str
    patient: str
    files: Tuple[str, ...]  # the case's image files (read and compared across cases by the content check)
    slices: int  # axial slices (training slices for Synapse train_npz)
    split: Optional[str] = None  # the release's own folder split, if it has one (Synapse: train / test)
    label_files: Tuple[str, ...] = ()  # separate label files (read, but identical masks in two cases are fine)


@dataclass
class Recognised:
    """A release found under ``root``: where it starts (``base``) and what it holds."""
    release: Release
    root: str
    base: str
    items: List[Item] = field(default_factory=list)
    cases: List[Case] = field(default_factory=list)
    found: Dict[str, int] = field(default_factory=dict)  # counts found, keys as in release.published
    dropped: List[Tuple[str, str]] = field(default_factory=list)  # (file, why) left out (allow_partial only)


@dataclass
class ContentReport:
    """What :func:`check_contents` found; ``deviations`` lists what was accepted under ``allow_partial``."""
    checked: int
    counts: Dict[str, int]
    published: Dict[str, int]
    count_mismatches: List[str]
    unreadable: List[Tuple[str, str]]
    cross_label_duplicates: List[List[str]]
    merged_groups: int
    duplicate_files: int
    deviations: List[str] = field(default_factory=list)


# ---------------------------------------------------------------- the five releases
SYNAPSE_TEST = SYNAPSE_TEST_CASES  # the case lists and slice counts live in mednext_zoo.catalog

RELEASES: Dict[str, Release] = {
    'sarscov2_ct': Release(
        key='sarscov2_ct', name='SARS-CoV-2 CT-scan dataset (Soares et al. 2020)', task='classification',
        download='https://www.kaggle.com/datasets/plameneduardo/sarscov2-ctscan-dataset',
        how='kaggle datasets download -d plameneduardo/sarscov2-ctscan-dataset, then unzip',
        licence_source='The Kaggle page could not be read from where this package was built; the dataset paper '
                       '(medRxiv 2020.04.24.20078584) states no licence.',
        tree='DIR/\n  COVID/       Covid (1).png ... (1,252 PNG slices)\n'
             '  non-COVID/   Non-Covid (1).png ... (1,230 PNG slices)',
        published={'covid': 1252, 'non_covid': 1230},
        sources=('https://doi.org/10.1101/2020.04.24.20078584 (1,252 positive + 1,230 negative, 2,482 CT scans)',
                 'Kaggle notebooks reading ../input/sarscov2-ctscan-dataset/COVID/Covid (10).png and '
                 'non-COVID/Non-Covid (100).png (folder and file names)'),
        class_dirs={'covid': ('COVID',), 'non_covid': ('non-COVID', 'non_COVID', 'noncovid')},
        notes=('The release has no patient ids: images are split by image, so slices of one patient may fall in '
               'both train and test (test figures are optimistic).',),
    ),
    'monkeypox_msld': Release(
        key='monkeypox_msld', name='Monkeypox Skin Lesion Dataset (MSLD v1, Ali et al. 2022)',
        task='classification',
        download='https://www.kaggle.com/datasets/nafin59/monkeypox-skin-lesion-dataset',
        how='kaggle datasets download -d nafin59/monkeypox-skin-lesion-dataset, then unzip (the authors also '
            'link a Google Drive copy from github.com/mHealthBuet/Monkeypox-Skin-Lesion-Dataset)',
        licence_source='github.com/ShamsNafisaAli/Monkeypox-Skin-Lesion-Dataset README (badge Assests/cc.JPG); '
                       'that repository\'s LICENSE file is MIT and covers its code.',
        tree='DIR/\n  Original Images/[Original Images/]\n    Monkey Pox/   M01_01.jpg ... (102 images)\n'
             '    Others/       NM01_01.jpg ... (126 images: chickenpox, measles)\n'
             '  Augmented Images/[Augmented Images/]\n    <Monkeypox class>/  (1,428 augmented copies)\n'
             '    <Others class>/     (1,764 augmented copies)\n  Fold1/ ...  (the authors\' 3-fold split; not used)',
        published={'monkeypox/original': 102, 'others/original': 126, 'monkeypox/augmented': 1428,
                   'others/augmented': 1764},
        sources=('github.com/ShamsNafisaAli/Monkeypox-Skin-Lesion-Dataset README: three folders (Original Images: '
                 '228 = 102 Monkeypox + 126 Others; Augmented Images: ~14-fold, 1,428 + 1,764; Fold1: 70:10:20 '
                 'split keeping patients apart, test holding originals only) and a 228-row CSV of image ids',
                 'third-party code reading Original Images/Original Images/Monkey Pox/M01_01.jpg (nesting and '
                 'class folder name; the augmented folders\' names were not seen and are matched loosely)'),
        class_dirs={'monkeypox': ('Monkey Pox', 'Monkeypox', 'Mpox'),
                    'others': ('Others', 'Other', 'Non Monkeypox', 'Non-Monkeypox')},
        notes=('Augmented copies are tied to their original by file name (M01_01_05.jpg -> M01_01) and stay in its '
               'split; the name prefix (M01) is taken as the patient, a coarser grouping that can only remove '
               'leaks, never add them.',),
    ),
    'covid_ct_large': Release(
        key='covid_ct_large', name='Large COVID-19 CT scan slice dataset (Maftouni et al. 2021)',
        task='classification',
        download='https://www.kaggle.com/datasets/maedemaftouni/large-covid19-ct-slice-dataset',
        how='kaggle datasets download -d maedemaftouni/large-covid19-ct-slice-dataset, then unzip',
        licence_source='github.com/maftouni/Curated_Covid_CT has no licence file; the Kaggle page could not be '
                       'read from where this package was built.',
        tree='DIR/\n  meta_data_covid.csv    columns include "Patient ID", "File name"\n'
             '  meta_data_normal.csv\n  meta_data_cap.csv      (CAP class, not used)\n'
             '  curated_data/[curated_data/]\n    1NonCOVID/   (6,893 slices, 604 patients)\n'
             '    2COVID/      (7,593 slices, 466 patients)\n    3CAP/        (2,618 slices, not used)',
        published={'covid': 7593, 'non_covid': 6893, 'covid patients': 466, 'non_covid patients': 604},
        sources=('github.com/maftouni/Curated_Covid_CT README (7,593 COVID-19 images from 466 patients, 6,893 '
                 'normal from 604, 2,618 CAP from 60; meta_data_{covid,normal,cap}.csv)',
                 'third-party loaders reading curated_data/curated_data/{1NonCOVID,2COVID} with the CSV columns '
                 '"Patient ID" and "File name"'),
        class_dirs={'covid': ('2COVID',), 'non_covid': ('1NonCOVID',)},
    ),
    'synapse': Release(
        key='synapse', name='Synapse multi-organ CT, TransUNet preprocessed release', task='segmentation',
        download='https://github.com/Beckschen/TransUNet (README: "BTCV preprocessed data" Google Drive link); '
                 'raw data: https://www.synapse.org/Synapse:syn3193805',
        how='download the preprocessed folder linked from the TransUNet README (data/Synapse)',
        licence_source='github.com/Beckschen/TransUNet datasets/README.md; the Synapse page (syn3193805) could not '
                       'be read from where this package was built.',
        tree='DIR/ (TransUNet\'s data/Synapse)\n  train_npz/     case0005_slice000.npz ... (18 cases, 2,211 slices; '
             'keys image, label)\n  test_vol_h5/   case0001.npy.h5 ... (12 volumes; keys image, label)',
        published={'train cases': 18, 'train slices': 2211, 'test cases': 12},
        sources=('github.com/Beckschen/TransUNet datasets/README.md (tree, preprocessing)',
                 'github.com/Beckschen/TransUNet lists/lists_Synapse/train.txt (2,211 slices of 18 cases) and '
                 'test_vol.txt (12 cases)'),
    ),
    'acdc': Release(
        key='acdc', name='ACDC cine-MRI (MICCAI 2017 challenge, Bernard et al. 2018)', task='segmentation',
        download='https://www.creatis.insa-lyon.fr/Challenge/acdc/databases.html',
        how='download the database from the Human Heart Project platform linked on the ACDC page and unzip '
            '(database/training holds patient001-100)',
        licence_source='creatis.insa-lyon.fr/Challenge/acdc pages (mandatory citation); the database page\'s '
                       'licence text could not be read from where this package was built.',
        tree='DIR/ (database/)\n  training/\n    patient001/  Info.cfg (ED: n, ES: m), patient001_4d.nii.gz,\n'
             '                 patient001_frame01.nii.gz + _gt.nii.gz, patient001_frame12.nii.gz + _gt.nii.gz\n'
             '    ... patient100/\n  testing/  patient101-150 (not in the protocol\'s lists; ignored)',
        published={'patients': 100, 'labelled volumes': 200},
        sources=('github.com/mathpluscode/CineMA cinema/data/acdc/README.md (database/training/patientNNN tree, '
                 'Info.cfg with ED / ES frame numbers)',
                 'creatis.insa-lyon.fr/Challenge/acdc/evaluation.html (labels 0 background, 1 RV, 2 Myo, 3 LV)'),
    ),
}


def get_release(key: str) -> Release:
    """The :class:`Release` of ``key`` (a key of :data:`RELEASES`); raises UserInputError naming the known ones."""
    if key not in RELEASES:
        raise UserInputError(f'Unknown release {key!r}; choose one of {", ".join(RELEASES)}.')
    return RELEASES[key]


# ---------------------------------------------------------------- helpers
def _norm(name: str) -> str:
    """Folder names compared without case, spaces, '-' and '_' ('Monkey Pox' == 'monkeypox')."""
    return re.sub(r'[\s_\-]+', '', name).lower()


def _subdirs(path: str) -> List[str]:
    try:
        return sorted(d for d in os.listdir(path) if not d.startswith('.') and os.path.isdir(os.path.join(path, d)))
    except OSError:
        return []


def _walk_dirs(root: str, max_depth: int = 4) -> List[str]:
    """``root`` and its folders down to ``max_depth`` levels, shallowest first."""
    out, frontier = [root], [root]
    for _ in range(max_depth):
        nxt = [os.path.join(p, d) for p in frontier for d in _subdirs(p)]
        out.extend(nxt)
        frontier = nxt
    return out


def _images(folder: str) -> List[str]:
    out = []
    for r, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        out.extend(os.path.join(r, f) for f in sorted(files) if not f.startswith('.') and f.lower().endswith(PIL_EXTS))
    return out


def _listing(root: str, depth: int = 2, limit: int = 24) -> str:
    """The first two levels of ``root`` (folders with their file counts), for error messages."""
    if not os.path.isdir(root):
        return f'  ({root} does not exist)'
    lines: List[str] = []

    def visit(path: str, indent: int, level: int) -> None:
        try:
            names = sorted(n for n in os.listdir(path) if not n.startswith('.'))
        except OSError:
            return
        dirs = [n for n in names if os.path.isdir(os.path.join(path, n))]
        files = [n for n in names if n not in dirs]
        if files:
            shown = ', '.join(files[:3]) + (f', ... ({len(files)} files)' if len(files) > 3 else '')
            lines.append('  ' * indent + shown)
        for d in dirs:
            if len(lines) >= limit:
                return
            lines.append('  ' * indent + d + '/')
            if level < depth:
                visit(os.path.join(path, d), indent + 1, level + 1)

    visit(root, 1, 1)
    if len(lines) >= limit:
        lines = lines[:limit] + ['  ...']
    return '\n'.join(lines) if lines else '  (empty)'


def _layout_error(release: Release, root: str, problem: str) -> ReleaseLayoutError:
    return ReleaseLayoutError(
        f'{root} does not look like the {release.name} as released: {problem}\n'
        f'Expected:\n' + '\n'.join('  ' + ln for ln in release.tree.splitlines()) + '\n'
        f'Found in {root}:\n{_listing(root)}\n'
        f'Download: {release.download} ({release.how}).\n'
        f'Licence you accept by downloading: {release.licence}.'
    )


def _find_class_parent(root: str, wanted: Mapping[str, Tuple[str, ...]], strip: str = '') -> Optional[Tuple[str,
                                                                                                     Dict[str, str]]]:
    """The shallowest folder under ``root`` that holds one sub-folder per wanted label; (folder, label -> dir)."""
    for parent in _walk_dirs(root):
        found: Dict[str, str] = {}
        for d in _subdirs(parent):
            n = _norm(d)
            if strip and n.endswith(strip):
                n = n[: -len(strip)]
            for label, names in wanted.items():
                if n in {_norm(a) for a in names} and label not in found:
                    found[label] = os.path.join(parent, d)
        if len(found) == len(wanted):
            return parent, found
    return None


# ---------------------------------------------------------------- recognisers
def _recognise_sarscov2(release: Release, root: str, allow_partial: bool) -> Recognised:
    hit = _find_class_parent(root, release.class_dirs)
    if hit is None:
        raise _layout_error(release, root, 'no folder holds both COVID/ and non-COVID/.')
    base, dirs = hit
    items = []
    for label, d in dirs.items():
        files = _images(d)
        if not files:
            raise _layout_error(release, root, f'{d} holds no PNG / JPEG images.')
        items += [Item(p, label, group=os.path.relpath(p, base)) for p in files]
    found = {label: sum(i.label == label for i in items) for label in dirs}
    return Recognised(release, root, base, items=items, found=found)


def _source_stem(stem: str, originals: Mapping[str, object]) -> str:
    """The longest original name that ``stem`` starts with, not followed by a digit (``M01_01_05``,
    ``M01_01aug3`` -> ``M01_01``; never ``M01_1`` for ``M01_10``); ``stem`` itself if there is none."""
    for i in range(len(stem), 0, -1):
        if stem[:i] in originals and (i == len(stem) or not stem[i].isdigit()):
            return stem[:i]
    return stem



def _recognise_msld(release: Release, root: str, allow_partial: bool) -> Recognised:
    orig = next((d for d in _walk_dirs(root, 3) if _norm(os.path.basename(d)) == 'originalimages'
                 and _find_class_parent(d, release.class_dirs) is not None), None)
    if orig is None:
        raise _layout_error(release, root, 'no "Original Images" folder with Monkey Pox/ and Others/ class folders.')
    o_base, o_dirs = _find_class_parent(orig, release.class_dirs)
    aug = next((d for d in _walk_dirs(root, 3) if _norm(os.path.basename(d)) == 'augmentedimages'
                and _find_class_parent(d, release.class_dirs, strip='augmented') is not None), None)
    if aug is None:
        raise _layout_error(release, root, 'no "Augmented Images" folder with a Monkeypox and an Others class '
                                           'folder (the paper trains on the 3,192 augmented images).')
    a_base, a_dirs = _find_class_parent(aug, release.class_dirs, strip='augmented')
    items: List[Item] = []
    stems: Dict[str, Tuple[str, str]] = {}  # original stem -> (label, patient)
    for label, d in o_dirs.items():
        for p in _images(d):
            stem = os.path.splitext(os.path.basename(p))[0]
            patient = stem.split('_')[0]
            stems[stem] = (label, patient)
            items.append(Item(p, label, group=f'{label}/{patient}', kind='original', patient=patient))
    dropped: List[Tuple[str, str]] = []
    for label, d in a_dirs.items():
        for p in _images(d):
            stem = os.path.splitext(os.path.basename(p))[0]
            src = _source_stem(stem, stems)
            if src not in stems or stems[src][0] != label:
                why = ('no original image it was made from' if src not in stems
                       else f'its original {src} is labelled {stems[src][0]!r}')
                if not allow_partial:
                    raise _layout_error(release, root, f'augmented image {p} has {why}; every augmented copy must '
                                                       f'stay with its original image (or pass --allow-partial to '
                                                       f'drop such files, recorded in the card).')
                dropped.append((p, why))
                continue
            items.append(Item(p, label, group=f'{label}/{stems[src][1]}', kind='augmented', patient=stems[src][1]))
    found = {f'{label}/{kind}': sum(i.label == label and i.kind == kind for i in items)
             for label in release.class_dirs for kind in ('original', 'augmented')}
    return Recognised(release, root, os.path.commonpath([o_base, a_base]), items=items, found=found, dropped=dropped)


def _read_meta_csv(path: str) -> Dict[str, str]:
    """``{file name: patient id}`` from a metadata CSV with "Patient ID" and "File name" columns."""
    raw = open(path, 'rb').read()
    for enc in ('utf-8-sig', 'cp1252', 'latin-1'):  # the release's CSVs are not all UTF-8
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise UserInputError(f'{path} is empty.')
    header = [_norm(h) for h in rows[0]]
    try:
        pi, fi = header.index('patientid'), header.index('filename')
    except ValueError:
        raise UserInputError(f'{path}: expected the columns "Patient ID" and "File name"; found {rows[0]}.') from None
    out = {}
    for r in rows[1:]:
        if len(r) > max(pi, fi) and r[fi].strip():
            out[r[fi].strip()] = r[pi].strip()
    return out


def _recognise_covid_large(release: Release, root: str, allow_partial: bool) -> Recognised:
    metas: Dict[str, str] = {}
    for d in _walk_dirs(root, 2):
        for f in os.listdir(d):
            label = {'metadatacovid.csv': 'covid', 'metadatanormal.csv': 'non_covid'}.get(_norm(f))
            if label and label not in metas:
                metas[label] = os.path.join(d, f)
    hit = _find_class_parent(root, release.class_dirs)
    needed = (('meta_data_covid.csv', 'covid' in metas), ('meta_data_normal.csv', 'non_covid' in metas),
              ('curated_data/.../1NonCOVID/ and 2COVID/', hit is not None))
    missing = [n for n, ok in needed if not ok]
    if missing:
        raise _layout_error(release, root, f'missing {", ".join(missing)}.')
    base, dirs = hit
    items: List[Item] = []
    dropped: List[Tuple[str, str]] = []
    found: Dict[str, int] = {}
    for label, d in dirs.items():
        patients = _read_meta_csv(metas[label])
        unlisted = []
        for p in _images(d):
            pid = patients.get(os.path.basename(p))
            if pid is None:
                unlisted.append(p)
                continue
            items.append(Item(p, label, group=f'{label}/{pid}', patient=pid))
        if unlisted:
            if not allow_partial:
                raise ReleaseContentError(
                    f'{len(unlisted)} image(s) in {d} are not listed in {metas[label]} (e.g. {unlisted[0]}), so their '
                    f'patient is unknown and a patient-wise split cannot place them. Restore the release\'s CSV, or '
                    f'pass --allow-partial to leave them out (recorded in the card).')
            dropped += [(p, f'not in {os.path.basename(metas[label])}') for p in unlisted]
        found[label] = sum(i.label == label for i in items)
        found[f'{label} patients'] = len({i.patient for i in items if i.label == label})
    return Recognised(release, root, base, items=items, found=found, dropped=dropped)


def _recognise_synapse(release: Release, root: str, allow_partial: bool) -> Recognised:
    base = next((d for d in _walk_dirs(root, 3) if {'train_npz', 'test_vol_h5'} <= set(_subdirs(d))), None)
    if base is None:
        raise _layout_error(release, root, 'no folder holds both train_npz/ and test_vol_h5/.')
    by_case: Dict[str, List[str]] = {}
    for f in sorted(os.listdir(os.path.join(base, 'train_npz'))):
        m = re.match(r'^(case\d+)_slice\d+\.npz$', f)
        if m:
            by_case.setdefault(m.group(1), []).append(os.path.join(base, 'train_npz', f))
    cases = [Case(c, c, tuple(fs), len(fs), 'train') for c, fs in sorted(by_case.items())]
    for f in sorted(os.listdir(os.path.join(base, 'test_vol_h5'))):
        m = re.match(r'^(case\d+)\.npy\.h5$', f)
        if m:
            path = os.path.join(base, 'test_vol_h5', f)
            cases.append(Case(m.group(1), m.group(1), (path,), _h5_depth(path), 'test'))
    train = [c for c in cases if c.split == 'train']
    found = {'train cases': len(train), 'train slices': sum(c.slices for c in train),
             'test cases': sum(c.split == 'test' for c in cases)}
    want_train = {f'case{n:04d}' for n in SYNAPSE_TRAIN_SLICES}
    want_test = {f'case{n:04d}' for n in SYNAPSE_TEST}
    have_train, have_test = {c.case_id for c in train}, {c.case_id for c in cases if c.split == 'test'}
    problems = []
    if want_train - have_train:
        problems.append(f'train_npz/ lacks {sorted(want_train - have_train)}')
    if want_test - have_test:
        problems.append(f'test_vol_h5/ lacks {sorted(want_test - have_test)}')
    extra = sorted((have_train - want_train) | (have_test - want_test))
    if extra:
        problems.append(f'cases outside TransUNet\'s lists or in the wrong folder: {extra[:6]}')
    if problems:  # the protocol needs every listed case: not even --allow-partial can train without them
        raise _layout_error(release, root, '; '.join(problems) + '.')
    return Recognised(release, root, base, cases=cases, found=found)


def _recognise_acdc(release: Release, root: str, allow_partial: bool) -> Recognised:
    def patients_in(d: str) -> List[str]:
        return [s for s in _subdirs(d) if re.fullmatch(r'patient\d{3}', s)]

    base = next((d for d in _walk_dirs(root, 3) if os.path.basename(d) == 'training' and patients_in(d)), None)
    if base is None and patients_in(root) and not any(int(p[7:]) > 100 for p in patients_in(root)):
        base = root  # the training folder itself
    if base is None:
        raise _layout_error(release, root, 'no training/ folder with patientNNN/ sub-folders.')
    cases: List[Case] = []
    problems: List[str] = []
    for pdir in patients_in(base):
        folder = os.path.join(base, pdir)
        info = read_info_cfg(os.path.join(folder, 'Info.cfg'))
        if set(info) != {'ED', 'ES'}:
            problems.append(f'{pdir}/Info.cfg does not name the ED and ES frames')
            continue
        for phase in ('ED', 'ES'):
            stem = f'{pdir}_frame{info[phase]:02d}'
            img, gt = (os.path.join(folder, stem + s + '.nii.gz') for s in ('', '_gt'))
            if not (os.path.isfile(img) and os.path.isfile(gt)):
                problems.append(f'{pdir}: {phase} frame {stem}.nii.gz or its _gt is missing')
                continue
            cases.append(Case(stem, pdir, (img,), _nifti_depth(img), label_files=(gt,)))
    have = {int(p[7:]) for p in patients_in(base)}
    missing = sorted(set(range(1, 101)) - have)
    if missing:
        problems.insert(0, f'patients {missing[:10]}{" ..." if len(missing) > 10 else ""} are missing '
                           f'({len(missing)} of 100)')
    if problems:  # the 70/10/20 lists need every patient
        raise _layout_error(release, root, '; '.join(problems[:6]) + '.')
    found = {'patients': len({c.patient for c in cases}), 'labelled volumes': len(cases)}
    return Recognised(release, root, base, cases=cases, found=found)


def _h5_depth(path: str) -> int:
    """Slices of a TransUNet test volume (0 where it cannot be read here; the content check names the file)."""
    try:
        import h5py
        with h5py.File(path, 'r') as f:
            return int(f['image'].shape[0])
    except Exception:  # unreadable files are reported by check_contents
        return 0


def _nifti_depth(path: str) -> int:
    import nibabel as nib
    try:
        shape = nib.load(path).shape
    except Exception as e:  # nibabel raises several types for unreadable files
        raise ReleaseContentError(f'{path}: cannot read as NIfTI ({e}).') from None
    return int(shape[2]) if len(shape) > 2 else 1


_RECOGNISERS = {
    'sarscov2_ct': _recognise_sarscov2, 'monkeypox_msld': _recognise_msld, 'covid_ct_large': _recognise_covid_large,
    'synapse': _recognise_synapse, 'acdc': _recognise_acdc,
}


def recognise(key: str, root: str, allow_partial: bool = False) -> Recognised:
    """Find release ``key`` under ``root`` and list its labelled images or cases.

    Raises:
        ReleaseLayoutError: the tree is not the release's (the message shows the expected tree, what was found,
            where to download and the licence).
    """
    release = get_release(key)
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
        raise _layout_error(release, root, 'the folder does not exist.')
    return _RECOGNISERS[key](release, root, allow_partial)


# ---------------------------------------------------------------- content checks
def _pixel_hash(path: str) -> Tuple[Optional[str], Optional[str]]:
    """(sha1 of the decoded pixels, None) or (None, why unreadable): two files with the same pixels match even
    when their encodings differ."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            h = hashlib.sha1(f'{im.mode}{im.size}'.encode())
            h.update(im.tobytes())
        return h.hexdigest(), None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return None, f'{type(e).__name__}: {e}'


def _volume_hash(path: str) -> Tuple[Optional[str], Optional[str]]:
    """(sha1 of the file's bytes, None) after reading the arrays once, or (None, why unreadable)."""
    try:
        low = path.lower()
        if low.endswith('.npz'):
            import numpy as np
            with np.load(path) as z:
                for k in ('image', 'label'):
                    np.asarray(z[k])
        elif low.endswith('.h5'):
            import h5py
            with h5py.File(path, 'r') as f:
                for k in ('image', 'label'):
                    f[k][()]
        elif low.endswith(('.nii', '.nii.gz')):
            import nibabel as nib
            nib.load(path).get_fdata(dtype='float32')
    except Exception as e:  # any reader failure is an unreadable file
        return None, f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest(), None


def _hash_all(paths: Sequence[str], fn, cache_path: Optional[str], progress: bool) -> Dict[str, Tuple]:
    """``{path: (hash, error)}``, reusing ``cache_path`` entries whose size and mtime still match."""
    cache: Dict[str, list] = {}
    if cache_path and os.path.isfile(cache_path):
        try:
            with open(cache_path) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
    out: Dict[str, Tuple] = {}
    todo = []
    for p in paths:
        st = os.stat(p)
        c = cache.get(p)
        if c and c[0] == st.st_size and c[1] == st.st_mtime_ns:
            out[p] = (c[2], c[3])
        else:
            todo.append((p, st))
    if todo:
        it = todo
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = pool.map(lambda t: fn(t[0]), todo)
            if progress:
                from tqdm.auto import tqdm
                results = tqdm(results, total=len(todo), desc='checking files', leave=False)
            for (p, st), (h, err) in zip(it, results):
                out[p] = (h, err)
                cache[p] = [st.st_size, st.st_mtime_ns, h, err]
        if cache_path:
            atomic_write_text(cache_path, json.dumps(cache))
    return out


def check_contents(rec: Recognised, allow_partial: bool = False, cache: Optional[str] = None,
                   progress: bool = True) -> Tuple[Recognised, ContentReport]:
    """Read every file once and compare the release with what was published.

    Returns the recognised release with its groups merged across duplicate images (and, under ``allow_partial``,
    unreadable files and cross-label duplicates dropped), and the report.

    Raises:
        ReleaseContentError: counts differ from the published totals, unreadable files, or the same image under
            two labels -- unless ``allow_partial``, which drops the files and records each difference in
            ``report.deviations``.
    """
    release = rec.release
    classification = release.task == 'classification'
    paths = [i.path for i in rec.items] if classification else [f for c in rec.cases
                                                                    for f in c.files + c.label_files]
    hashes = _hash_all(paths, _pixel_hash if classification else _volume_hash, cache, progress)
    unreadable = [(p, err) for p, (h, err) in hashes.items() if h is None]
    deviations: List[str] = [f'left out {p} ({why})' for p, why in rec.dropped]

    # duplicates: same content under two labels (classification) or in two cases (segmentation)
    owner: Dict[str, List[int]] = {}
    units = rec.items if classification else rec.cases
    for idx, u in enumerate(units):
        for p in ((u.path,) if classification else u.files):
            h = hashes[p][0]
            if h is not None:
                owner.setdefault(h, []).append(idx)
    dup_sets = [sorted(set(v)) for v in owner.values() if len(v) > 1]
    duplicate_files = sum(len(v) - 1 for v in owner.values() if len(v) > 1)
    cross: List[List[str]] = []
    for s in dup_sets:
        labels = {units[i].label for i in s} if classification else {units[i].case_id for i in s}
        if len(labels) > 1:
            cross.append([units[i].path if classification else units[i].case_id for i in s])

    problems = []
    if unreadable:
        problems.append(f'{len(unreadable)} unreadable file(s), e.g. {unreadable[0][0]} ({unreadable[0][1]})')
    if cross:
        what = 'labels' if classification else 'cases'
        problems.append(f'{len(cross)} image(s) with identical content under two {what}, '
                        f'e.g. {" == ".join(cross[0][:3])}')

    # counts against the published totals (after dropping what is unreadable)
    bad = {p for p, _ in unreadable}
    if classification:
        kept = [i for i in rec.items if i.path not in bad]
        counts = _classification_counts(rec, kept)
    else:
        counts = dict(rec.found)
    mismatches = [f'{k}: found {counts.get(k, 0)}, published {v}' for k, v in release.published.items()
                  if counts.get(k, 0) != v]
    if mismatches:
        problems.append('counts differ from the published totals (' + '; '.join(mismatches) + ')')
    if unreadable and not classification:  # every case of the protocol's lists is needed
        raise ReleaseContentError(
            f'{len(unreadable)} unreadable file(s) in {rec.base}, e.g. {unreadable[0][0]} ({unreadable[0][1]}); the '
            f'protocol needs every case. Download the release again from {release.download}.')
    if problems and not allow_partial:
        raise ReleaseContentError(
            f'{rec.base} is not the {release.name} as published: ' + '; '.join(problems) + '.\n'
            f'Download it again from {release.download}, or pass --allow-partial to train on what is there '
            f'(unreadable files and images under two labels are left out; every difference is recorded in the '
            f'model card as a deviation from the protocol).')
    deviations += [f'unreadable, left out: {p} ({err})' for p, err in unreadable]
    if classification:
        deviations += [f'same image under two labels, left out: {", ".join(c)}' for c in cross]
    else:
        deviations += [f'identical files in cases {", ".join(c)}' for c in cross]
    deviations += [f'count differs from the published total: {m}' for m in mismatches]

    merged = 0
    if classification:
        drop = bad | {p for c in cross for p in c}
        items = [i for i in rec.items if i.path not in drop]
        # duplicates of one label tie their groups together so that no copy straddles two splits
        parent: Dict[str, str] = {}

        def find(g: str) -> str:
            while parent.get(g, g) != g:
                g = parent[g]
            return g

        index = {i.path: i for i in items}
        for s in dup_sets:
            groups = sorted({find(units[i].group) for i in s if units[i].path in index})
            for g in groups[1:]:
                parent[g] = groups[0]
                merged += 1
        items = [replace(i, group=find(i.group)) if find(i.group) != i.group else i for i in items]
        rec = replace(rec, items=items)
    report = ContentReport(len(paths), counts, dict(release.published), mismatches, unreadable, cross, merged,
                           duplicate_files, deviations)
    return rec, report


def _classification_counts(rec: Recognised, items: Sequence[Item]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for k in rec.release.published:
        label, _, rest = k.partition('/')
        if rest:  # 'label/kind'
            counts[k] = sum(i.label == label and i.kind == rest for i in items)
        elif k.endswith(' patients'):
            lab = k[: -len(' patients')]
            counts[k] = len({i.patient for i in items if i.label == lab})
        else:
            counts[k] = sum(i.label == k for i in items)
    return counts
