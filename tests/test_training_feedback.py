"""What a run tells its user while it trains (issue 24): one line per epoch in every mode, a Ctrl-C message naming
the last checkpoint and the command that continues it, where --resume resumes and what the user changed (in the
user's terms), a plain word on schedules too short to decay, one-line warnings."""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import warnings

import pytest
import torch

from mednext_zoo.cli import main
from mednext_zoo.finetune.engine import config_changes, format_epoch_line
from tests.test_finetune import _regression_engine, make_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH_LINE = re.compile(r'^\[mednext-zoo\] epoch (\d+)/(\d+)  train loss \d+\.\d{4}  val loss \d+\.\d{4}\*?  '
                        r'val accuracy \d\.\d{4}\*?  val auc (\d\.\d{4}|nan)\*?  lr \d\.\d\de-\d\d  \d+\.\d s  '
                        r'(ETA .+|done)$')


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('imgs'), n=6, size=40)


CLI = ['--model', 'mednext_tiny', '--img-size', '32', '--batch-size', '4', '--bootstrap', '0', '--no-export',
       '--val-frac', '0.34', '--warmup-epochs', '1', '--device', 'cpu']


def test_epoch_line_format():
    rec = {'epoch': 3, 'step': 12, 'lr': 0.00291, 'train_loss': 0.41234, 'val_loss': 0.35119, 'val_accuracy': 0.875,
           'val_auc': 0.93101, 'val_f1': 0.5, 'time_s': 12.43}
    assert format_epoch_line(rec, 10, ['loss', 'auc', 'accuracy'], best='auc', eta_s=87) == (
        '[mednext-zoo] epoch 3/10  train loss 0.4123  val loss 0.3512  val auc 0.9310*  val accuracy 0.8750  '
        'lr 2.91e-03  12.4 s  ETA 1 min 27 s')
    assert format_epoch_line({**rec, 'epoch': 10}, 10, ['loss'], eta_s=0).endswith('12.4 s  done')


def test_engine_prints_one_line_per_epoch_with_progress_off(tmp_path, capsys):
    eng, _ = _regression_engine(tmp_path / 'r', lr=0.01, epochs=3)
    assert not eng.cfg.progress
    eng.fit()
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split('  ')[0] for ln in lines] == [f'[mednext-zoo] epoch {e}/3' for e in (1, 2, 3)]
    assert all('train loss' in ln and 'val loss' in ln and ' lr 1.00e-02 ' in ln for ln in lines)
    assert 'ETA' in lines[0] and lines[-1].endswith('done')
    log = [json.loads(x) for x in open(tmp_path / 'r' / 'metrics.jsonl')]
    assert f'val loss {log[0]["val_loss"]:.4f}*' in lines[0]  # improved: the monitored metric is starred


@pytest.mark.slow
def test_no_progress_log_file_has_one_line_per_epoch(tmp_path, folder):
    """The batch-job case: stdout redirected to a file shows a line per epoch, and no progress-bar debris."""
    log = tmp_path / 'train.log'
    env = {**os.environ, 'PYTHONPATH': REPO, 'OMP_NUM_THREADS': '1'}
    with open(log, 'w') as f:
        proc = subprocess.run([sys.executable, '-m', 'mednext_zoo.cli', 'finetune', '--data', folder, '--out',
                               str(tmp_path / 'run'), '--epochs', '3', '--no-progress', *CLI],
                              stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    epochs = [ln for ln in text.splitlines() if ln.startswith('[mednext-zoo] epoch ')]
    assert [EPOCH_LINE.match(ln).group(1) for ln in epochs] == ['1', '2', '3'], epochs
    assert '  ETA ' in epochs[0] and epochs[-1].endswith('  done')
    assert '\r' not in text and 'it/s' not in text


def test_ctrl_c_names_the_checkpoint_and_the_resume_command(tmp_path, folder, monkeypatch, capsys):
    from mednext_zoo.finetune import engine
    out = str(tmp_path / 'run')
    barrier = engine.barrier

    def ctrl_c(info):  # Ctrl-C right after the first epoch (its checkpoint written, its line printed)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, 'barrier', ctrl_c)
    argv = ['finetune', '--data', folder, '--out', out, '--epochs', '2', '--no-progress', *CLI]
    assert main(argv) == 130
    cap = capsys.readouterr()
    assert '[mednext-zoo] epoch 1/2  ' in cap.out
    latest = json.load(open(os.path.join(out, 'checkpoints', 'latest.json')))
    ckpt = os.path.join(out, 'checkpoints', latest['weights'])
    assert (f'mednext-zoo finetune: interrupted. The last checkpoint is {ckpt} (step {latest["step"]}, 1 epoch(s) '
            f'completed). Continue from it with:') in cap.err
    command = cap.err.strip().splitlines()[-1].strip()
    assert command == shlex.join(['mednext-zoo', *argv, '--resume'])
    monkeypatch.setattr(engine, 'barrier', barrier)
    # the printed command continues the run; --resume says where, and lists only what the user changed
    resumed = shlex.split(command)[1:]
    resumed[resumed.index('--epochs') + 1] = '3'
    assert main(resumed) == 0
    text = capsys.readouterr().out
    step = latest['step']
    assert (f'[mednext-zoo] resuming at step {step} from checkpoint {latest["tag"]}: epoch 2 of 3, from its first '
            f'batch') in text
    assert '[mednext-zoo] resuming with changed settings: --epochs 2 -> 3 (learning rate now ' in text
    assert 'warm' not in text.split('resuming with changed settings')[1].splitlines()[0]  # no timm internals
    assert [ln.split('  ')[0] for ln in text.splitlines() if ln.startswith('[mednext-zoo] epoch ')] == \
        ['[mednext-zoo] epoch 2/3', '[mednext-zoo] epoch 3/3']
    run = json.load(open(os.path.join(out, 'run.json')))
    assert run['resumes'][-1]['changed'] == ['--epochs 2 -> 3'] and run['resumes'][-1]['step'] == step


def test_interrupt_before_the_first_checkpoint_says_so(tmp_path, folder, monkeypatch, capsys):
    from mednext_zoo.finetune.engine import Engine

    def stop(self, resume=False, changes=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, 'fit', stop)
    assert main(['finetune', '--data', folder, '--out', str(tmp_path / 'run'), '--epochs', '1', '--no-progress',
                 *CLI]) == 130
    err = capsys.readouterr().err
    assert 'interrupted. No checkpoint was written yet: run the same command again' in err
    assert not (tmp_path / 'run').exists()


def test_config_changes_are_the_users_options(tmp_path):
    (tmp_path / 'config.json').write_text(json.dumps({
        'epochs': 2, 'lr': 0.003, 'warmup_epochs': 2.0, 'ema_decay': 0.0, 'crop_scale': [0.25, 1.0], 'augment': True,
        'resume': False, 'out': 'a', 'classes': ['a', 'b']}))
    new = {'epochs': 4, 'lr': 0.003, 'warmup_epochs': 1.0, 'ema_decay': 0.999, 'crop_scale': (0.25, 1.0),
           'augment': False, 'resume': True, 'out': 'b', 'classes': ['a', 'b']}
    assert config_changes(str(tmp_path), new) == ['--epochs 2 -> 4', '--warmup-epochs 2 -> 1', '--ema 0 -> 0.999',
                                                  'augmentation on -> off']
    assert config_changes(str(tmp_path / 'nothing'), new) == []


def test_resume_of_the_bare_engine_names_no_scheduler_internals(tmp_path, capsys):
    """Without a task's own list, only the optimiser settings a user sets are named (never timm's warm-up
    increment, start lr or schedule length)."""
    from mednext_zoo.finetune.engine import _setting_changes
    old = {'base_values': [0.003], 'warmup_lr_init': 3e-6, 'warmup_steps': [0.002997], 'warmup_t': 1,
           't_initial': 7, 'lr_min': 1e-6}
    new = {'base_values': [0.003], 'warmup_lr_init': 0.003, 'warmup_steps': [1], 'warmup_t': 0, 't_initial': 16,
           'lr_min': 1e-5}
    assert _setting_changes(old, new) == ['min lr 1e-06 -> 1e-05']
    eng, _ = _regression_engine(tmp_path / 'r', lr=0.01, epochs=1)
    eng.fit()
    eng, resumed = _regression_engine(tmp_path / 'r', lr=0.02, epochs=2, resume=True)
    capsys.readouterr()
    eng.fit(resume=resumed)
    out = capsys.readouterr().out
    assert '[mednext-zoo] resuming at step 8 from checkpoint step-00000008: epoch 2 of 2, from its first batch' in out
    assert '[mednext-zoo] resuming with changed settings: lr 0.01 -> 0.02 (learning rate now 0.02)' in out


def test_a_run_shorter_than_its_warm_up_says_so_plainly(caplog):
    from mednext_zoo.finetune import ClassificationConfig
    from mednext_zoo.finetune.recipe import TrainingRecipe, build_optimizer
    model = torch.nn.Linear(4, 2)
    cfg = ClassificationConfig(model='mednext_tiny', data='x', out='y', epochs=1, warmup_epochs=2, lr=1e-3)
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match=r'The run is 4 optimiser step\(s\) long '
                                                        r'and its 3-step warm-up takes every step but the last: the '
                                                        r'learning rate never decays'):
        build_optimizer(model, cfg.recipe(updates_per_epoch=4), total_steps=4)
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match='never decays'):
        build_optimizer(model, TrainingRecipe(), total_steps=1)
    assert not [r for r in caplog.records if 'will have no effect' in r.getMessage()]  # timm's line is held back
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a run long enough to decay: no warning
        build_optimizer(model, ClassificationConfig(model='mednext_tiny', data='x', out='y', epochs=3,
                                                    warmup_epochs=1).recipe(updates_per_epoch=4), total_steps=12)


def test_cli_warnings_are_one_line_each(capsys):
    from mednext_zoo.cli import _one_line_warnings
    with _one_line_warnings('finetune'):
        warnings.warn('Skipped 2 unreadable file(s) in data/ (first: data/a.png).\n  more', stacklevel=1)
        warnings.warn_explicit('old API', FutureWarning, '/x/lib/python3.11/site-packages/timm/layers/y.py', 12)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith('mednext-zoo finetune: warning: Skipped 2 unreadable file(s) in data/ (first: '
                             'data/a.png). more')
    assert err[1] == 'mednext-zoo finetune: warning: old API (FutureWarning from timm)'
    assert len(err) == 2  # no source line, no code line
