"""Training-efficiency suite: end to end on a tiny budget, spread over seeds, skipped baselines, held-out data."""
import csv
import json
import math
import sys

import pytest
import torch

from mednext_zoo.benchmark import training as T
from mednext_zoo.benchmark.training import TrainRow, run_training_suite, spread
from mednext_zoo.errors import UserInputError

TINY_SEG = dict(conv_dims=(8, 8, 16), med_dims=(32, 32), med_depths=(1, 1))
TINY_CLS = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), stem_chs=(8, 8))
FAST = dict(seeds=2, steps=4, eval_every=2, batch_size=4, threads=1, workers=1, progress=False)


def test_seg_suite_end_to_end_writes_four_outputs(tmp_path):
    rows = [TrainRow('tiny', 'medunext_tiny', TINY_SEG),
            TrainRow('tiny+os', 'medunext_tiny', TINY_SEG, recipe={'oversample_fg': 0.5, 'dice_mode': 'image'})]
    res = run_training_suite(task='seg', rows=rows, phantoms=['thick'], out_dir=str(tmp_path), **FAST)
    for name in ('train.json', 'train.csv', 'train.md', 'train.png'):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / 'train.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    data = json.loads((tmp_path / 'train.json').read_text())  # strict JSON (no NaN)
    assert data['meta']['settings']['threads'] == 1 and data['meta']['settings']['dtype'] == 'float32'
    assert data['tasks']['thick']['smallest'] == 'nodule' and data['tasks']['thick']['test_cases'] == 12
    r0, r1 = res['rows']
    assert r1['recipe_full']['oversample_fg'] == 0.5 and r0['recipe_full']['oversample_fg'] == 0.33
    for r in res['rows']:
        assert r['status'] == 'ok' and r['params_m'] > 0
        runs = r['runs']['thick']
        assert [run['seed'] for run in runs] == [0, 1]
        assert [pt['step'] for pt in runs[0]['curve']] == [2, 4]
        for pt in runs[0]['curve']:
            assert set(pt['dice']) == {'organ', 'vessel', 'nodule'} and 0 <= pt['dice']['organ'] <= 1
            assert pt['seconds'] > 0
        sm = r['summary']['thick']
        assert sm['n_seeds'] == 2 and [c['step'] for c in sm['curve']] == [2, 4]
        fin = [run['final']['dice']['organ'] for run in runs]
        assert sm['final']['organ']['mean'] == pytest.approx(sum(fin) / 2)
    lines = list(csv.DictReader(open(tmp_path / 'train.csv')))
    assert {(x['label'], x['seed'], x['step']) for x in lines if x['metric'] == 'dice_nodule'} == \
        {(lab, s, st) for lab in ('tiny', 'tiny+os') for s in ('0', '1') for st in ('2', '4')}
    md = (tmp_path / 'train.md').read_text()
    assert '| `tiny` (medunext_tiny) |' in md and 'steps to Dice nodule >= 0.9' in md and 'batch 4' in md


def test_spread_and_seed_summary():
    s = spread([0.5, 0.7, 0.9, float('nan'), None])
    assert s['n'] == 3 and s['mean'] == pytest.approx(0.7) and s['std'] == pytest.approx(0.2)
    assert (s['min'], s['max']) == (0.5, 0.9)
    assert spread([0.4])['std'] == 0.0 and spread([])['mean'] is None
    data = T.TaskData('t', 'seg', ['background', 'a', 'b'], torch.zeros(1, 1, 4, 4),
                      torch.tensor([[[0, 1, 1, 2]] * 4]), torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4).long())

    def run(seed, values, secs):
        curve = [{'step': 10 * (i + 1), 'seconds': secs * (i + 1), 'dice': {'a': 0.5, 'b': v}, 'target': v,
                  'mean_dice': (0.5 + v) / 2, 'absent_fp': {'a': float('nan'), 'b': 0.0}}
                 for i, v in enumerate(values)]
        return {'seed': seed, 'status': 'ok', 'curve': curve, 'final': curve[-1], 'sec_per_step': secs / 10,
                'wall_per_step': secs / 10, 'cpu_per_step': secs / 20,
                'reach': T.first_reach(curve, 0.9)}
    runs = [run(0, [0.2, 0.95, 0.97], 1.0), run(1, [0.5, 0.85, 0.92], 2.0), run(2, [0.1, 0.4, 0.6], 3.0)]
    sm = T.summarize_runs(runs, data, 0.9)
    assert data.smallest == 2  # 'b' has the fewest training pixels
    assert sm['curve'][1]['target']['mean'] == pytest.approx((0.95 + 0.85 + 0.4) / 3)
    assert sm['curve'][1]['target']['std'] == pytest.approx(torch.tensor([0.95, 0.85, 0.4]).std().item(), rel=1e-5)
    assert sm['curve'][2]['seconds']['mean'] == pytest.approx(6.0)
    assert sm['final']['b']['min'] == 0.6 and sm['final']['b']['max'] == 0.97
    assert sm['reached'] == 2 and sm['steps_to_target']['mean'] == pytest.approx(25.0)  # seeds reach at 20 / 30
    assert sm['seconds_to_target']['min'] == 2.0 and sm['seconds_to_target']['max'] == 6.0
    assert sm['mean_curve_reach'] is None  # the mean curve ends at 0.83
    assert sm['sec_per_step']['mean'] == pytest.approx(0.2)


def test_per_volume_dice():
    target = torch.zeros(4, 2, 2, dtype=torch.long)
    case = torch.tensor([0, 0, 1, 1])
    target[0, 0, 0] = target[1, 0, 0] = 1  # volume 0 holds class 1 in 2 voxels, volume 1 does not
    pred = target.clone()
    pred[1, 0, 0] = 0  # one of two found: Dice 2 * 1 / (1 + 2)
    pred[3, 1, 1] = 1  # a false positive in volume 1, which has no class 1
    res = T.per_volume_dice(pred, target, case, 3)
    assert res[1]['dice'] == pytest.approx(2 / 3) and res[1]['absent_fp'] == 1.0
    assert math.isnan(res[2]['dice']) and res[2]['absent_fp'] == 0.0


def test_missing_optional_baseline_is_a_skipped_row(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'monai', None)  # import monai -> ImportError
    res = run_training_suite(task='seg', rows=[TrainRow('tiny', 'medunext_tiny', TINY_SEG), 'monai_basicunet'],
                             phantoms=['thick'], out_dir=str(tmp_path), **{**FAST, 'seeds': 1, 'steps': 2})
    skipped = res['rows'][1]
    assert skipped['status'] == 'skipped' and not skipped['runs']
    assert skipped['reason'] == "skipped: MONAI not installed (pip install 'mednext-zoo[monai]')"
    assert "MONAI not installed (pip install 'mednext-zoo[monai]')" in (tmp_path / 'train.md').read_text()
    assert any(r['status'] == 'skipped' for r in csv.DictReader(open(tmp_path / 'train.csv')))
    assert res['rows'][0]['status'] == 'ok'


def test_held_out_cases_are_never_trained_on(monkeypatch):
    data = T._phantom_data('thick', 0)
    assert not set(data.train_case_ids) & set(data.test_case_ids)
    seen = []
    real = T.build_row_model

    def spy(row, *a):
        m = real(row, *a)
        m.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach().clone()) if mod.training else None)
        return m
    monkeypatch.setattr(T, 'build_row_model', spy)
    monkeypatch.setattr(T, 'load_task_data', lambda cfg: [data])
    run_training_suite(task='seg', rows=[TrainRow('tiny', 'medunext_tiny', TINY_SEG)], recipe={'augment': False},
                       **{**FAST, 'seeds': 1, 'steps': 6, 'eval_every': 3})
    batches = torch.cat(seen)
    assert len(batches) == 6 * 4
    flat_train, flat_test = data.train_x.flatten(1), data.test_x.flatten(1)
    for x in batches.flatten(1):
        assert (flat_train == x).all(1).any()  # every training input is a training slice ...
        assert not (flat_test == x).all(1).any()  # ... and none is a held-out slice


def test_user_dataset_uses_its_test_split(tmp_path):
    from mednext_zoo.data.synthetic import write_phantom_dataset
    root = write_phantom_dataset(str(tmp_path / 'ds'), phantom='thick', n_cases=3, n_test=2)
    res = run_training_suite(task='seg', rows=[TrainRow('tiny', 'medunext_tiny', TINY_SEG)], data=root,
                             img_size=32, **{**FAST, 'seeds': 1, 'steps': 2})
    info = res['tasks']['ds']
    assert info['test_cases'] == 2 and info['train_cases'] == 3 and info['image_size'] == [32, 32]
    assert info['classes'] == ['background', 'organ', 'vessel', 'nodule']
    assert res['rows'][0]['summary']['ds']['curve'][-1]['step'] == 2


def test_classification_rows(tmp_path):
    res = run_training_suite(task='cls', rows=[TrainRow('mednext', 'mednext_tiny', TINY_CLS), 'resnet18'],
                             out_dir=str(tmp_path), **{**FAST, 'seeds': 1, 'steps': 2})
    for r in res['rows']:
        assert r['status'] == 'ok', r.get('reason')
        pt = r['runs']['lesion'][0]['final']
        assert 0 <= pt['accuracy'] <= 1 and 0 <= pt['auc'] <= 1
        assert r['recipe_full']['opt'] == 'adamw'
    assert 'ROC AUC' in (tmp_path / 'train.md').read_text()


def test_bad_input_is_a_user_error():
    with pytest.raises(UserInputError, match='Unknown model'):
        run_training_suite(task='seg', rows=['medunext_tinny'], **FAST)
    with pytest.raises(UserInputError, match='Unknown phantom'):
        run_training_suite(task='seg', rows=[TrainRow('t', 'medunext_tiny', TINY_SEG)], phantoms=['big'], **FAST)
    with pytest.raises(UserInputError, match='Unknown recipe field'):
        run_training_suite(task='seg', rows=[TrainRow('t', 'medunext_tiny', TINY_SEG, recipe={'lr_peak': 1})],
                           **FAST)
    with pytest.raises(UserInputError, match='seg baseline'):
        run_training_suite(task='cls', rows=['unet_resnet18'], **FAST)
    with pytest.raises(UserInputError, match='unique'):
        run_training_suite(task='seg', rows=['unet_resnet18', 'unet_resnet18'], **FAST)


def test_cli_train_suite(tmp_path, capsys):
    from mednext_zoo.cli import main
    out = tmp_path / 'out'
    rc = main(['bench', '--suite', 'train', '--task', 'seg', '--phantoms', 'thick',
               '--row', 'tiny=medunext_tiny conv_dims=8,8,16 med_dims=32,32 med_depths=1,1 recipe.lr=0.003',
               '--seeds', '1', '--steps', '2', '--eval-every', '1', '--batch-size', '2', '--threads', '1',
               '--workers', '1',
               '--recipe', 'oversample_fg=0.33,dice_mode=image,augment=false', '--out', str(out), '--no-progress'])
    assert rc == 0
    res = json.loads((out / 'train.json').read_text())
    assert res['meta']['settings']['recipe'] == {'oversample_fg': 0.33, 'dice_mode': 'image', 'augment': False}
    assert res['rows'][0]['recipe_full']['oversample_fg'] == 0.33 and res['rows'][0]['recipe_full']['lr'] == 0.003
    assert res['rows'][0]['label'] == 'tiny' and res['rows'][0]['params_m'] < 0.2  # the small widths were used
    assert [p['step'] for p in res['rows'][0]['runs']['thick'][0]['curve']] == [1, 2]
    assert res['rows'][0]['model_kwargs'] == {'conv_dims': [8, 8, 16], 'med_dims': [32, 32], 'med_depths': [1, 1]}
    assert '## thick' in capsys.readouterr().out
    assert main(['bench', '--suite', 'train', '--models', 'medunext_tiny', '--recipe', 'oversample=1',
                 '--out', str(out)]) == 2


@pytest.mark.slow
def test_parallel_workers_give_the_same_curves():
    kw = dict(task='seg', rows=[TrainRow('tiny', 'medunext_tiny', TINY_SEG)], phantoms=['thick'],
              **{**FAST, 'steps': 2, 'eval_every': 1})
    one = run_training_suite(**kw)
    two = run_training_suite(**{**kw, 'workers': 2})
    assert two['meta']['settings']['workers'] == 2 and two['meta']['settings']['threads'] == 1
    for a, b in zip(one['rows'][0]['runs']['thick'], two['rows'][0]['runs']['thick']):
        assert a['seed'] == b['seed'] and [p['dice'] for p in a['curve']] == [p['dice'] for p in b['curve']]


def test_interrupted_suite_resumes_from_its_log(tmp_path, monkeypatch):
    kw = dict(task='seg', rows=[TrainRow('tiny', 'medunext_tiny', TINY_SEG)], phantoms=['thick'],
              out_dir=str(tmp_path), **{**FAST, 'steps': 2})
    first = run_training_suite(**kw)
    assert len((tmp_path / 'train.runs.jsonl').read_text().splitlines()) == 2

    def boom(*a, **k):
        raise AssertionError('a logged run was trained again')
    monkeypatch.setattr(T, 'train_one', boom)
    again = run_training_suite(**kw, resume=True)
    assert again['meta']['settings']['resumed_runs'] == 2
    assert json.dumps(again['rows'][0]['runs']) == json.dumps(first['rows'][0]['runs'])  # NaN-safe
    other = run_training_suite(**{**kw, 'steps': 3}, resume=True)  # another setting does not match the log
    assert other['rows'][0]['status'] == 'error' and 'trained again' in other['rows'][0]['reason']


def test_row_spec_parsing():
    r = TrainRow.parse('tiny-c=medunext_tiny skip_fusion=concat conv_dims=8,8,16 recipe.oversample_fg=0.33 '
                       'recipe.deep_supervision=false recipe.clip_grad=none')
    assert (r.label, r.model) == ('tiny-c', 'medunext_tiny')
    assert dict(r.model_kwargs) == {'skip_fusion': 'concat', 'conv_dims': (8, 8, 16)}
    assert dict(r.recipe) == {'oversample_fg': 0.33, 'deep_supervision': False, 'clip_grad': None}
    assert TrainRow.of('unet_resnet34') == TrainRow('unet_resnet34', 'unet_resnet34')
    with pytest.raises(UserInputError, match='key=value'):
        TrainRow.parse('medunext_tiny concat')


def test_layering_is_one_way():
    """data.synthetic loads nothing above the data layer; the recipe nothing from benchmark."""
    import subprocess
    code = ('import sys, json, importlib; importlib.import_module(sys.argv[1]); '
            'print(json.dumps(sorted({m.split(".")[1] for m in sys.modules if m.startswith("mednext_zoo.")})))')

    def loaded(module):
        out = subprocess.run([sys.executable, '-c', code, module], capture_output=True, text=True, check=True)
        return set(json.loads(out.stdout))  # the mednext_zoo sub-packages it imported
    assert not loaded('mednext_zoo.data.synthetic') & {'finetune', 'benchmark', 'hub', 'cli'}
    assert 'benchmark' not in loaded('mednext_zoo.finetune.recipe')
