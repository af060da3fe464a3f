"""`mednext-zoo reproduce`: release layouts and their errors, content checks, protocol application, dry runs, and
short real runs that end in a loadable, card-carrying Hub folder (all offline, on miniature fakes of each release
built here from pydicom's CT_small.dcm and scikit-image's immunohistochemistry photograph)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image

import mednext_zoo  # noqa: F401  (registers the models)
from mednext_zoo.cli import main as cli_main
from mednext_zoo.data.releases import (
    RELEASES,
    SYNAPSE_TEST,
    SYNAPSE_TRAIN_SLICES,
    ReleaseContentError,
    ReleaseLayoutError,
    check_contents,
    recognise,
)
from mednext_zoo.errors import UserInputError
from mednext_zoo.reproduce import PROTOCOLS, reproduce
from mednext_zoo.reproduce.splits import split_release, split_table, to_data_source

SIZE = 32  # the testing input-size override (a recorded deviation)


# ---------------------------------------------------------------- miniature releases
def _ct_slices(n, seed, bright):
    """``n`` distinct 24x24 RGB crops of pydicom's CT slice; ``bright`` adds a blob (the 'disease')."""
    import pydicom
    from pydicom.data import get_testdata_file
    ct = pydicom.dcmread(get_testdata_file('CT_small.dcm')).pixel_array.astype(np.float32)
    ct = (ct - ct.min()) / (ct.max() - ct.min())
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, 100, 2)
        img = ct[y:y + 24, x:x + 24].copy()
        if bright:
            img[6:14, 8:16] = np.clip(img[6:14, 8:16] + 0.5, 0, 1)
        out.append(np.repeat((img * 255).astype(np.uint8)[..., None], 3, -1))
    return out


def _photos(n, seed, tint):
    from skimage import data
    ihc = data.immunohistochemistry()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, 480, 2)
        img = ihc[y:y + 24, x:x + 24].astype(np.int16)
        img[..., 0] += tint
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def make_sarscov2(root, n=8):
    for i, img in enumerate(_ct_slices(n, 1, True), 1):
        _save(os.path.join(root, 'COVID', f'Covid ({i}).png'), img)
    for i, img in enumerate(_ct_slices(n, 2, False), 1):
        _save(os.path.join(root, 'non-COVID', f'Non-Covid ({i}).png'), img)
    return root


def make_msld(root, patients=4, per_patient=2, copies=2):
    o = os.path.join(root, 'Original Images', 'Original Images')
    a = os.path.join(root, 'Augmented Images', 'Augmented Images')
    for _label, folder, aug_folder, prefix, tint in (('monkeypox', 'Monkey Pox', 'Monkeypox_augmented', 'M', 60),
                                                   ('others', 'Others', 'Others_augmented', 'NM', -60)):
        photos = iter(_photos(patients * per_patient * (1 + copies), 3 if prefix == 'M' else 4, tint))
        for p in range(1, patients + 1):
            for k in range(1, per_patient + 1):
                stem = f'{prefix}{p:02d}_{k:02d}'
                _save(os.path.join(o, folder, stem + '.png'), next(photos))
                for c in range(copies):
                    _save(os.path.join(a, aug_folder, f'{stem}_{c:02d}.png'), next(photos))
    return root


def make_covid_large(root, patients=5, per_patient=2):
    for _label, folder, csv_name, bright, seed in (('covid', '2COVID', 'meta_data_covid.csv', True, 5),
                                                   ('non_covid', '1NonCOVID', 'meta_data_normal.csv', False, 6)):
        imgs = iter(_ct_slices(patients * per_patient, seed, bright))
        rows = ['File name,Patient ID,Age,Gender,Country']
        for p in range(patients):
            for k in range(per_patient):
                name = f'{folder[1:]}_{p}_{k}.png'
                _save(os.path.join(root, 'curated_data', 'curated_data', folder, name), next(imgs))
                rows.append(f'{name},{p + 1},51,M,Brazil')  # the same ids in both classes: groups are per class
        with open(os.path.join(root, csv_name), 'w', encoding='cp1252') as f:
            f.write('\n'.join(rows) + '\n')
    os.makedirs(os.path.join(root, 'curated_data', 'curated_data', '3CAP'))
    return root


def _slice(rng, organs, size=16):
    lab = np.zeros((size, size), np.uint8)
    for k, (y, x) in organs.items():
        lab[y:y + 5, x:x + 5] = k
    img = np.clip(lab / 8.0 + rng.normal(0, 0.05, lab.shape), 0, 1).astype(np.float32)
    return img, lab


def make_synapse(root, slices=2, test_slices=1):
    h5py = pytest.importorskip('h5py')
    base = os.path.join(root, 'data', 'Synapse')
    os.makedirs(os.path.join(base, 'train_npz'))
    os.makedirs(os.path.join(base, 'test_vol_h5'))
    rng = np.random.default_rng(0)
    organs = {5: (2, 2), 7: (9, 9)}  # liver, spleen
    for n in SYNAPSE_TRAIN_SLICES:
        for z in range(slices):
            img, lab = _slice(rng, organs)
            np.savez(os.path.join(base, 'train_npz', f'case{n:04d}_slice{z:03d}.npz'), image=img, label=lab)
    for n in SYNAPSE_TEST:
        img, lab = zip(*[_slice(rng, organs) for _ in range(test_slices)])
        with h5py.File(os.path.join(base, 'test_vol_h5', f'case{n:04d}.npy.h5'), 'w') as f:
            f['image'], f['label'] = np.stack(img), np.stack(lab).astype(np.float32)
    return root


def make_acdc(root, patients=range(1, 101)):
    import nibabel as nib
    rng = np.random.default_rng(1)
    for split, ids in (('training', patients), ('testing', (101,))):
        for pid in ids:
            d = os.path.join(root, 'database', split, f'patient{pid:03d}')
            os.makedirs(d)
            with open(os.path.join(d, 'Info.cfg'), 'w') as f:
                f.write('ED: 1\nES: 12\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n')
            for fr in (1, 12):
                img, lab = _slice(rng, {1: (2, 2), 2: (8, 3), 3: (9, 9)})
                stem = os.path.join(d, f'patient{pid:03d}_frame{fr:02d}')
                aff = np.diag([1.5, 1.5, 10.0, 1.0])
                nib.save(nib.Nifti1Image(img[..., None] * 300, aff), stem + '.nii.gz')
                nib.save(nib.Nifti1Image(lab[..., None], aff), stem + '_gt.nii.gz')
    return root


MAKERS = {'sarscov2_ct': make_sarscov2, 'monkeypox_msld': make_msld, 'covid_ct_large': make_covid_large,
          'synapse': make_synapse, 'acdc': make_acdc}


@pytest.fixture(scope='module')
def fakes(tmp_path_factory):
    root = tmp_path_factory.mktemp('releases')
    return {k: make(str(root / k)) for k, make in MAKERS.items()}


# ---------------------------------------------------------------- layout recognition
def test_recognises_each_release_as_downloaded(fakes):
    rec = recognise('sarscov2_ct', fakes['sarscov2_ct'])
    assert rec.found == {'covid': 8, 'non_covid': 8} and rec.base == fakes['sarscov2_ct']
    assert all(i.patient is None for i in rec.items)

    rec = recognise('monkeypox_msld', fakes['monkeypox_msld'])
    assert rec.found == {'monkeypox/original': 8, 'monkeypox/augmented': 16, 'others/original': 8,
                         'others/augmented': 16}
    aug = next(i for i in rec.items if i.path.endswith('M03_02_01.png'))
    assert aug.kind == 'augmented' and aug.group == 'monkeypox/M03' and aug.label == 'monkeypox'

    rec = recognise('covid_ct_large', fakes['covid_ct_large'])  # Kaggle's curated_data/curated_data nesting
    assert rec.found == {'covid': 10, 'covid patients': 5, 'non_covid': 10, 'non_covid patients': 5}
    assert {i.group for i in rec.items if i.label == 'covid'} == {f'covid/{p}' for p in range(1, 6)}

    rec = recognise('synapse', fakes['synapse'])  # found below DIR/data/Synapse
    assert rec.base.endswith(os.path.join('data', 'Synapse'))
    assert rec.found == {'train cases': 18, 'train slices': 36, 'test cases': 12}
    assert {(c.split, c.slices) for c in rec.cases} == {('train', 2), ('test', 1)}

    rec = recognise('acdc', fakes['acdc'])  # database/training; testing/ (patients 101-150) is ignored
    assert rec.base.endswith(os.path.join('database', 'training'))
    assert rec.found == {'patients': 100, 'labelled volumes': 200}
    assert {c.case_id for c in rec.cases if c.patient == 'patient007'} == {'patient007_frame01', 'patient007_frame12'}


@pytest.mark.parametrize('key', list(RELEASES))
def test_wrong_tree_shows_expected_found_download_and_licence(key, tmp_path):
    (tmp_path / 'some_folder').mkdir()
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(ReleaseLayoutError) as e:
        recognise(key, str(tmp_path))
    msg = str(e.value)
    release = RELEASES[key]
    assert 'Expected:' in msg and release.tree.splitlines()[1].strip() in msg
    assert f'Found in {tmp_path}:' in msg and 'some_folder/' in msg and 'notes.txt' in msg
    assert release.download.split()[0] in msg and 'Licence you accept by downloading: not verified' in msg


def test_partial_trees_say_what_is_missing(fakes, tmp_path):
    syn = shutil.copytree(fakes['synapse'], tmp_path / 'syn')
    os.remove(syn / 'data' / 'Synapse' / 'test_vol_h5' / 'case0038.npy.h5')
    with pytest.raises(ReleaseLayoutError, match=r"test_vol_h5/ lacks \['case0038'\]"):
        recognise('synapse', str(syn))
    acdc = shutil.copytree(fakes['acdc'], tmp_path / 'acdc')
    shutil.rmtree(acdc / 'database' / 'training' / 'patient042')
    with pytest.raises(ReleaseLayoutError, match=r'patients \[42\] are missing \(1 of 100\)'):
        recognise('acdc', str(acdc))
    large = shutil.copytree(fakes['covid_ct_large'], tmp_path / 'large')
    os.remove(large / 'meta_data_normal.csv')
    with pytest.raises(ReleaseLayoutError, match='missing meta_data_normal.csv'):
        recognise('covid_ct_large', str(large))
    msld = shutil.copytree(fakes['monkeypox_msld'], tmp_path / 'msld')
    _save(str(msld / 'Augmented Images' / 'Augmented Images' / 'Others_augmented' / 'NM09_01_00.png'),
          _photos(1, 9, 0)[0])
    with pytest.raises(ReleaseLayoutError, match='NM09_01_00.png has no original image'):
        recognise('monkeypox_msld', str(msld))
    rec = recognise('monkeypox_msld', str(msld), allow_partial=True)
    assert [os.path.basename(p) for p, _ in rec.dropped] == ['NM09_01_00.png']


# ---------------------------------------------------------------- content checks
def test_content_checks_counts_unreadable_and_duplicates(fakes, tmp_path):
    rec = recognise('sarscov2_ct', fakes['sarscov2_ct'])
    with pytest.raises(ReleaseContentError, match=r'covid: found 8, published 1252') as e:
        check_contents(rec, progress=False)
    assert '--allow-partial' in str(e.value) and RELEASES['sarscov2_ct'].download in str(e.value)
    _, report = check_contents(rec, allow_partial=True, progress=False)
    assert report.checked == 16 and not report.unreadable and not report.cross_label_duplicates
    assert 'count differs from the published total: covid: found 8, published 1252' in report.deviations

    root = shutil.copytree(fakes['sarscov2_ct'], tmp_path / 'sars')
    (root / 'COVID' / 'Covid (3).png').write_bytes(b'\x89PNG truncated')  # unreadable
    shutil.copy(root / 'COVID' / 'Covid (1).png', root / 'non-COVID' / 'dup.png')  # same image, both labels
    shutil.copy(root / 'COVID' / 'Covid (2).png', root / 'COVID' / 'Covid (2) copy.png')  # same image, same label
    rec = recognise('sarscov2_ct', str(root))
    cache = str(tmp_path / 'cache.json')
    rec2, report = check_contents(rec, allow_partial=True, cache=cache, progress=False)
    assert [os.path.basename(p) for p, _ in report.unreadable] == ['Covid (3).png']
    assert [sorted(os.path.basename(p) for p in c) for c in report.cross_label_duplicates] == [['Covid (1).png',
                                                                                                'dup.png']]
    kept = {os.path.basename(i.path) for i in rec2.items}
    assert not {'Covid (3).png', 'Covid (1).png', 'dup.png'} & kept
    groups = {os.path.basename(i.path): i.group for i in rec2.items}
    assert groups['Covid (2).png'] == groups['Covid (2) copy.png'] and report.merged_groups == 1
    assert any(d.startswith('unreadable, left out') for d in report.deviations)
    with pytest.raises(ReleaseContentError, match='1 unreadable file'):
        check_contents(rec, cache=cache, progress=False)  # served from the cache, same verdict
    assert len(json.load(open(cache))) == 18

    acdc = shutil.copytree(fakes['acdc'], tmp_path / 'acdc')
    train = acdc / 'database' / 'training'
    shutil.copy(train / 'patient001' / 'patient001_frame01.nii.gz', train / 'patient002' / 'patient002_frame01.nii.gz')
    rec = recognise('acdc', str(acdc))
    with pytest.raises(ReleaseContentError, match='identical content under two cases'):
        check_contents(rec, progress=False)
    _, report = check_contents(rec, allow_partial=True, progress=False)  # identical masks alone are fine
    assert report.deviations == ['identical files in cases patient001_frame01, patient002_frame01']


# ---------------------------------------------------------------- protocol application
def test_classification_split_label_order_groups_and_kinds(fakes):
    p = PROTOCOLS['mednext_base.sarscov2_ct']
    rec, _ = check_contents(recognise('sarscov2_ct', fakes['sarscov2_ct']), allow_partial=True, progress=False)
    rows = split_release(rec, p)
    assert rows == split_release(rec, p)  # fixed seed
    src = to_data_source(rows, p, rec.base)
    assert src.classes == ['non_covid', 'covid']  # the tag's order, not the folders' sort order (COVID < non-COVID)
    assert src.class_to_idx['covid'] == 1
    assert split_table(rows, p) == {'train': {'non_covid': 5, 'covid': 5}, 'val': {'non_covid': 1, 'covid': 1},
                                    'test': {'non_covid': 2, 'covid': 2}}

    p = PROTOCOLS['mednext_base.monkeypox_msld']
    rec, _ = check_contents(recognise('monkeypox_msld', fakes['monkeypox_msld']), allow_partial=True, progress=False)
    rows = split_release(rec, p)
    split_of = {}
    for _path, _label, group, kind, split in rows:
        assert split_of.setdefault(group, split) == split  # a patient (with its augmented copies) in one split
        assert kind == ('original' if split == 'test' else 'augmented')
    assert set(split_of.values()) == {'train', 'val', 'test'}

    p = PROTOCOLS['mednext_base.covid_ct_large']
    rec, _ = check_contents(recognise('covid_ct_large', fakes['covid_ct_large']), allow_partial=True, progress=False)
    rows = split_release(rec, p)
    by_group = {}
    for _path, _label, group, _kind, split in rows:
        by_group.setdefault(group, set()).add(split)
    assert all(len(s) == 1 for s in by_group.values()) and len(by_group) == 10


def test_segmentation_lists(fakes):
    rows = split_release(recognise('synapse', fakes['synapse']), PROTOCOLS['medunext_base.synapse'])
    assert sorted(r[0] for r in rows if r[4] == 'test') == [f'case{n:04d}' for n in SYNAPSE_TEST]
    assert sum(r[4] == 'train' for r in rows) == 18
    p = PROTOCOLS['medunext_base.acdc']
    rows = split_release(recognise('acdc', fakes['acdc']), p)
    assert split_table(rows, p) == {'train': {'cases': 140, 'patients': 70}, 'val': {'cases': 20, 'patients': 10},
                                    'test': {'cases': 40, 'patients': 20}}
    test = {r[1] for r in rows if r[4] == 'test'}
    assert {'patient002', 'patient095'} <= test and 'patient001' not in test


def test_protocol_table_matches_the_tags():
    for tag, p in PROTOCOLS.items():
        assert p.label_order == tuple(timm.models.get_pretrained_cfg(tag).label_names)
        assert p.seeds == (0, 1, 2) and set(p.paper) <= {'precision', 'recall', 'f1', 'accuracy', 'auc',
                                                          'dice_legacy', 'hd95_legacy'}
    assert PROTOCOLS['medunext_base.synapse'].recipe['epochs'] == 100
    assert PROTOCOLS['mednext_base.sarscov2_ct'].recipe['epochs'] == 300


# ---------------------------------------------------------------- dry runs
@pytest.mark.parametrize('tag', list(PROTOCOLS))
def test_dry_run_prints_the_plan(tag, fakes, capsys, tmp_path):
    key = PROTOCOLS[tag].release
    out = tmp_path / 'never'
    rc = cli_main(['reproduce', tag, '--data', fakes[key], '--out', str(out), '--dry-run', '--allow-partial',
                   '--timing-steps', '0', '--no-progress'])
    assert rc == 0 and not out.exists()  # a dry run writes nothing
    text = capsys.readouterr().out
    for field in ('data check', 'labels', 'split', 'recipe', 'seeds', 'estimate', 'deviations', 'licence'):
        assert f'  {field}' in text
    assert ('300 epochs' if PROTOCOLS[tag].task == 'classification' else '100 epochs') in text


@pytest.mark.slow
def test_dry_run_estimate_from_measured_steps(fakes):
    plan = reproduce('mednext_base.sarscov2_ct', fakes['sarscov2_ct'], dry_run=True, allow_partial=True,
                     img_size=SIZE, batch_size=4, timing_steps=1, progress=False)
    assert plan['sec_per_step'] > 0 and plan['estimate_s'] > plan['sec_per_step'] * 300  # 2 steps x 300 epochs
    assert 'measured' in plan['estimate'] and 'batch 4' in plan['estimate']
    assert 'input 32x32 instead of 224x224 (testing override)' in plan['deviations']


def test_bad_options(fakes, tmp_path):
    with pytest.raises(UserInputError, match='Unknown tag'):
        reproduce('mednext_base.imagenet', fakes['sarscov2_ct'], str(tmp_path / 'r'))
    with pytest.raises(UserInputError, match='--seeds must be 1..3'):
        reproduce('mednext_base.sarscov2_ct', fakes['sarscov2_ct'], str(tmp_path / 'r'), seeds=4)
    with pytest.raises(UserInputError, match='--out RUN_DIR is needed'):
        reproduce('mednext_base.sarscov2_ct', fakes['sarscov2_ct'])
    with pytest.raises(ReleaseContentError, match='published'):  # the real release, or --allow-partial
        reproduce('mednext_base.sarscov2_ct', fakes['sarscov2_ct'], dry_run=True, timing_steps=0, progress=False)


# ---------------------------------------------------------------- real (short) runs
@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / 'hf' / 'hub'
    cache.mkdir(parents=True)
    for k, v in dict(HF_HOME=cache.parent, HF_HUB_CACHE=cache, HF_HUB_OFFLINE='1').items():
        monkeypatch.setenv(k, os.fspath(v))
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', os.fspath(cache))
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    return cache


def _round_trip(tag, run, in_chans):
    """The export loads bit-identically through local-dir: and through a seeded offline cache with the tag."""
    from safetensors.torch import load_file

    from mednext_zoo.hub import seed_hf_cache
    from mednext_zoo.models._pretrained import hub_id
    trained = timm.create_model(tag, img_size=SIZE)
    trained.load_state_dict(load_file(os.path.join(run, 'seed-0', 'checkpoints', 'best.safetensors')))
    seed_hf_cache(os.path.join(run, 'export'), hub_id(*tag.split('.', 1)))
    by_tag = timm.create_model(tag, pretrained=True, img_size=SIZE).eval()
    by_dir = timm.create_model(f'local-dir:{run}/export', pretrained=True).eval()
    x = torch.randn(2, in_chans, SIZE, SIZE)
    with torch.no_grad():
        ref = trained.eval()(x)
        assert torch.equal(ref, by_tag(x)) and torch.equal(ref, by_dir(x))
    assert not torch.equal(ref, timm.create_model(tag, img_size=SIZE).eval()(x))  # not vacuous


@pytest.mark.slow
def test_classification_two_epochs_two_seeds_resume_and_export(fakes, tmp_path, capsys, offline_cache):
    tag = 'mednext_base.sarscov2_ct'
    run = str(tmp_path / 'run')
    args = ['reproduce', tag, '--data', fakes['sarscov2_ct'], '--out', run, '--epochs', '2', '--batch-size', '4',
            '--img-size', str(SIZE), '--allow-partial', '--timing-steps', '0', '--bootstrap', '50', '--no-progress']
    assert cli_main(args) == 0
    first = capsys.readouterr().out
    assert 'estimate' in first and f'mednext-zoo push {run}/export mednext-zoo/{tag} --dry-run' in first
    # an existing run is never overwritten silently; a resume must keep the settings
    assert cli_main(args) == 2 and '--resume' in capsys.readouterr().err
    assert cli_main(args[:6] + ['--epochs', '3'] + args[8:] + ['--resume']) == 2
    assert 'different setup' in capsys.readouterr().err
    # resume with a second seed: seed 0 is kept, seed 1 trained, the card gets mean ± std over both
    assert cli_main(args + ['--resume', '--seeds', '2']) == 0
    assert 'seed 0: already trained' in capsys.readouterr().out
    summary = json.load(open(os.path.join(run, 'summary.json')))
    assert summary['seeds'] == [0, 1] and summary['sessions'] == 2 and summary['mean_std']['f1']['n'] == 2
    assert summary['round_trip'] == 'local-dir: load gives bit-identical outputs'
    assert summary['deviations'][:3] == ['2 epochs instead of 300', 'batch 4 instead of 32',
                                         'input 32x32 instead of 224x224 (testing override)']
    card = open(os.path.join(run, 'export', 'README.md')).read()
    f1 = summary['per_seed']['0']['f1']
    assert '| Metric | Measured (these weights) | 95% CI | Mean ± std over seeds | Paper (reference, not measured ' \
           'here) |' in card
    assert f'| f1 | {f1:.4f} |' in card and '| 0.9835 |' in card and '(n=2)' in card
    assert '## Reproduction' in card and 'Deviations from the protocol: 2 epochs instead of 300' in card
    assert summary['split_sha256'] in card and 'commit `' in card and 'Table 2' in card
    config = json.load(open(os.path.join(run, 'export', 'config.json')))
    assert config['label_names'] == ['non_covid', 'covid'] and config['pretrained_cfg']['tag'] == 'sarscov2_ct'
    _round_trip(tag, run, 3)


@pytest.mark.slow
def test_segmentation_two_epochs_export_both_metric_modes(fakes, tmp_path, offline_cache):
    tag = 'medunext_base.synapse'
    run = str(tmp_path / 'run')
    summary = reproduce(tag, fakes['synapse'], run, epochs=2, batch_size=32, img_size=SIZE, allow_partial=True,
                        timing_steps=0, progress=False)
    assert summary['split_cases']['test'] == [f'case{n:04d}' for n in SYNAPSE_TEST]
    assert {'dice_legacy', 'hd95_legacy', 'dice_strict', 'hd95_strict', 'dice_legacy liver'} <= \
        set(summary['per_seed']['0'])
    card = open(os.path.join(run, 'export', 'README.md')).read()
    assert '| dice_legacy |' in card and '| hd95_legacy (voxels) |' in card and '| 0.7945 |' in card
    assert '| dice_strict |' in card and 'case0001, case0002' in card and '2 epochs instead of 100' in card
    config = json.load(open(os.path.join(run, 'export', 'config.json')))
    assert config['pretrained_cfg']['mean'] == [0.0] and config['num_classes'] == 9
    _round_trip(tag, run, 1)


def test_card_labels_measured_seed_and_paper_columns():
    from mednext_zoo.hub.card import render_model_card
    card = render_model_card(
        arch='mednext_base', repo_id=None, task='classification', input_size=(3, 32, 32), mean=(0.5,) * 3,
        std=(0.5,) * 3, interpolation='bicubic', label_names=['non_covid', 'covid'], num_params=10, gflops=None,
        metrics={'f1': {'value': 0.9, 'ci': (0.8, 0.95), 'mean_std': '0.9000 ± 0.0100 (n=3)', 'paper': 0.9835},
                 'ece': 0.05},
        sections=[('Reproduction', '- Deviations from the protocol: none.')])
    assert ('| Metric | Measured (these weights) | 95% CI | Mean ± std over seeds | Paper (reference, not measured '
            'here) |') in card
    assert '| f1 | 0.9000 | 0.8000 - 0.9500 | 0.9000 ± 0.0100 (n=3) | 0.9835 |' in card
    assert '| ece | 0.0500 |  |  |  |' in card
    assert card.index('## Evaluation') < card.index('## Reproduction') < card.index('## Size and compute')


def test_process_group_kept_across_nested_fits(monkeypatch):
    """torchrun's store cannot create the default group twice: a reproduction keeps one group for all its seeds."""
    import torch.distributed as dist

    from mednext_zoo.finetune import engine
    calls, state = [], {'up': False}
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setattr(dist, 'is_initialized', lambda: state['up'])
    monkeypatch.setattr(dist, 'init_process_group', lambda **kw: (calls.append('init'), state.update(up=True)))
    monkeypatch.setattr(dist, 'destroy_process_group', lambda: (calls.append('destroy'), state.update(up=False)))
    outer = engine.setup_distributed('cpu')
    for _ in range(3):  # one fit per seed
        engine.setup_distributed('cpu')
        engine.cleanup_distributed()
    assert calls == ['init'] and outer.enabled
    engine.cleanup_distributed()
    assert calls == ['init', 'destroy']
