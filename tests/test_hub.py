"""Pretrained weights: tags, offline loading (HF cache, hf-hub:, local-dir:, file), adaptation, safety, cards, CLI.

Everything runs offline: a temporary Hugging Face cache is seeded in the real cache layout and
huggingface_hub is put in offline mode (HF_HUB_OFFLINE=1) for every test.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import scan_cache_dir, try_to_load_from_cache

import mednext_zoo
from mednext_zoo import hub
from mednext_zoo.cli import main as cli_main
from mednext_zoo.errors import UserInputError
from mednext_zoo.models._pretrained import DATASETS, HF_HUB_ORG, PRETRAINED_TAGS, pretrained_cfg_kwargs
from mednext_zoo.models.mednext import resample_axial_weight

BASE_TAGS = ('sarscov2_ct', 'monkeypox_msld', 'covid_ct_large')
SIZE = 64  # small inputs: the axial matrices make img_size part of the weights


pytestmark = pytest.mark.usefixtures('offline_hf')  # tests/conftest.py: every test offline, empty cache


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope='module')
def saved_base(tmp_path_factory):
    """A mednext_base.sarscov2_ct at SIZE x SIZE with non-default BN statistics, saved with save_pretrained."""
    torch.manual_seed(0)
    model = timm.create_model('mednext_base.sarscov2_ct', img_size=SIZE).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    out = tmp_path_factory.mktemp('saved') / 'mednext_base.sarscov2_ct'
    hub.save_pretrained(model, out, dataset='sarscov2_ct', flops=False,
                        metrics={'accuracy': 0.5, 'auc': {'value': 0.5, 'ci': (0.4, 0.6)}})
    return model, out


# --- registry ------------------------------------------------------------------------------------------------


def test_base_tags_have_full_cfgs():
    tiny = timm.create_model('mednext_tiny', img_size=SIZE)  # same module names as base
    for tag in BASE_TAGS:
        cfg = timm.models.get_pretrained_cfg(f'mednext_base.{tag}').to_dict()
        ds = DATASETS[tag]
        assert cfg['hf_hub_id'] == f'{HF_HUB_ORG}/mednext_base.{tag}'
        assert cfg['num_classes'] == len(cfg['label_names']) == len(ds['label_names'])
        assert tuple(cfg['label_names']) == tuple(ds['label_names'])
        assert cfg['input_size'] == (3, 224, 224)
        assert len(cfg['mean']) == len(cfg['std']) == cfg['input_size'][0]
        assert cfg['license'] and cfg['license'] == ds['license']
        tiny.get_submodule(cfg['first_conv'])
        tiny.get_submodule(cfg['classifier'])
        assert PRETRAINED_TAGS[f'mednext_base.{tag}']['status'] == 'not yet published'
    # binary tasks: the positive class is index 1
    for tag in BASE_TAGS:
        assert DATASETS[tag]['label_names'][1] == DATASETS[tag]['positive_class']


def test_medunext_tags_have_full_cfgs():
    tiny = timm.create_model('medunext_tiny', img_size=SIZE)  # same module names as base
    for tag, n in (('synapse', 9), ('acdc', 4)):
        cfg = timm.models.get_pretrained_cfg(f'medunext_base.{tag}').to_dict()
        assert cfg['hf_hub_id'] == f'{HF_HUB_ORG}/medunext_base.{tag}'
        assert cfg['num_classes'] == len(cfg['label_names']) == n and cfg['label_names'][0] == 'background'
        assert cfg['input_size'] == (1, 224, 224) and len(cfg['mean']) == len(cfg['std']) == 1
        assert cfg['license'] == DATASETS[tag]['license']
        tiny.get_submodule(cfg['first_conv'])
        tiny.get_submodule(cfg['classifier'])
    assert timm.models.get_pretrained_cfg('medunext_base').tag == 'synapse'


def test_segmentation_card_round_trip(tmp_path):
    model = timm.create_model('medunext_tiny', img_size=SIZE, num_classes=4).eval()
    out = hub.save_pretrained(model, tmp_path / 'acdc', dataset='acdc', metrics={'mean DSC': 0.9}, flops=False)
    card = (out / 'README.md').read_text()
    assert 'pipeline_tag: image-segmentation' in card and '| 3 | left ventricle |' in card
    assert 'Per structure per test volume in 3D' in card
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert _same_weights(loaded, model) and loaded.in_chans == 1


def test_default_tag_and_segmentation_entries():
    assert timm.models.get_pretrained_cfg('mednext_base').tag == 'sarscov2_ct'
    assert set(timm.list_pretrained('mednext_base.*')) == {f'mednext_base.{t}' for t in BASE_TAGS}
    assert set(timm.list_pretrained('medunext_base.*')) == {'medunext_base.synapse', 'medunext_base.acdc'}
    syn = pretrained_cfg_kwargs('medunext_base.synapse')
    assert syn['hf_hub_id'] == f'{HF_HUB_ORG}/medunext_base.synapse'
    assert syn['label_names'][0] == 'background' and syn['num_classes'] == 9
    assert syn['label_names'][1:] == ('aorta', 'gallbladder', 'left kidney', 'right kidney', 'liver', 'pancreas',
                                      'spleen', 'stomach')
    acdc = pretrained_cfg_kwargs('medunext_base.acdc')
    assert acdc['label_names'] == ('background', 'right ventricle', 'myocardium', 'left ventricle')
    assert syn['input_size'] == acdc['input_size'] == (1, 224, 224)


# --- round trip through the real cache layout ---------------------------------------------------------------


def test_seed_cache_is_a_valid_hf_cache(saved_base, offline_hf):
    _, folder = saved_base
    repo = f'{HF_HUB_ORG}/mednext_base.sarscov2_ct'
    snapshot = hub.seed_hf_cache(folder, repo)
    info = scan_cache_dir(offline_hf)
    assert not info.warnings
    (cached,) = info.repos
    assert cached.repo_id == repo and cached.repo_type == 'model'
    (rev,) = cached.revisions
    assert rev.refs == frozenset({'main'}) and rev.snapshot_path == snapshot
    assert {f.file_name for f in rev.files} == set(hub.HUB_FILES)
    weights = try_to_load_from_cache(repo, 'model.safetensors')
    assert weights and Path(weights).resolve().parent.name == 'blobs'


@pytest.mark.slow
def test_offline_round_trip_bit_identical(saved_base):
    model, folder = saved_base
    hub.seed_hf_cache(folder, f'{HF_HUB_ORG}/mednext_base.sarscov2_ct')
    fresh = timm.create_model('mednext_base.sarscov2_ct', img_size=SIZE)
    assert not _same_weights(fresh, model)  # the check below is not vacuous

    by_tag = timm.create_model('mednext_base.sarscov2_ct', pretrained=True, img_size=SIZE)
    by_hub = timm.create_model(f'hf-hub:{HF_HUB_ORG}/mednext_base.sarscov2_ct', pretrained=True)
    by_dir = timm.create_model(f'local-dir:{folder}', pretrained=True)
    by_file = timm.create_model('mednext_base', pretrained=True, img_size=SIZE,
                                pretrained_cfg_overlay=dict(file=os.fspath(folder / 'model.safetensors')))
    for loaded in (by_tag, by_hub, by_dir, by_file):
        assert _same_weights(loaded, model)
    # hf-hub: / local-dir: rebuild the saved input size and labels from config.json
    for loaded in (by_hub, by_dir):
        assert loaded.img_size == (SIZE, SIZE)
        assert list(loaded.pretrained_cfg['label_names']) == ['non_covid', 'covid']
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), by_hub.eval()(x))


# --- adaptation ------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_file(tmp_path_factory):
    torch.manual_seed(1)
    model = timm.create_model('mednext_tiny', img_size=SIZE, num_classes=4).eval()
    path = tmp_path_factory.mktemp('tiny') / 'tiny.safetensors'
    safetensors.torch.save_file(model.state_dict(), os.fspath(path))
    return model, path


def _load_tiny(path, **kwargs):
    overlay = dict(file=os.fspath(path), num_classes=4, input_size=kwargs.pop('src_input', (3, SIZE, SIZE)))
    return timm.create_model('mednext_tiny', pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def test_adapt_num_classes_reinitialises_head_only(tiny_file):
    src, path = tiny_file
    model = _load_tiny(path, num_classes=7, img_size=SIZE)
    assert model.get_classifier().weight.shape == (7, src.num_features)
    sd, ref = model.state_dict(), src.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref if not k.startswith('head.fc.'))


def test_adapt_three_to_one_channel(tiny_file):
    src, path = tiny_file
    gray = _load_tiny(path, in_chans=1, img_size=SIZE)
    assert gray.stem[0].conv.weight.shape[1] == 1
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():  # summed first conv: a grey image gives what its RGB copy gave
        torch.testing.assert_close(gray(x), src(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_adapt_one_to_three_channels(tmp_path):
    torch.manual_seed(2)
    src = timm.create_model('mednext_tiny', img_size=SIZE, num_classes=4, in_chans=1).eval()
    path = tmp_path / 'gray.safetensors'
    safetensors.torch.save_file(src.state_dict(), os.fspath(path))
    rgb = _load_tiny(path, in_chans=3, img_size=SIZE, src_input=(1, SIZE, SIZE))
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rgb(x.expand(-1, 3, -1, -1)), src(x), rtol=1e-4, atol=1e-5)


def test_adapt_img_size_resamples_axial_matrices(tiny_file):
    src, path = tiny_file
    big = _load_tiny(path, img_size=96)
    key = 'stages.0.blocks.0.token_mixer.mix_h.weight'
    old, new = src.state_dict()[key], big.state_dict()[key]
    assert old.shape == (16, 16) and new.shape == (24, 24)
    torch.testing.assert_close(new, resample_axial_weight(old, 24))
    assert big(torch.randn(1, 3, 96, 96)).shape == (1, 4)


# --- never silently random --------------------------------------------------------------------------------------


def test_empty_cache_raises_with_repo_location_and_offline_ways(offline_hf):
    with pytest.raises(hub.PretrainedWeightsNotFoundError) as e:
        timm.create_model('mednext_base.monkeypox_msld', pretrained=True, img_size=SIZE)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert f"'{HF_HUB_ORG}/mednext_base.monkeypox_msld'" in msg
    assert os.fspath(offline_hf) in msg and 'HF_HUB_OFFLINE=1' in msg
    assert 'not yet published' in msg
    assert 'hf download' in msg and 'local-dir:' in msg and 'pretrained_cfg_overlay=dict(file=' in msg


def test_default_name_pretrained_raises_not_random(offline_hf):
    with pytest.raises(hub.PretrainedWeightsNotFoundError, match='mednext_base.sarscov2_ct'):
        timm.create_model('mednext_base', pretrained=True, img_size=SIZE)
    with pytest.raises(hub.PretrainedWeightsNotFoundError, match=f"'{HF_HUB_ORG}/medunext_base.synapse'"):
        timm.create_model('medunext_base', pretrained=True, img_size=SIZE)


class _Calls(list):
    """A stand-in for timm's ``hf_hub_download``: records each file asked for and finds nothing."""

    def __call__(self, repo_id=None, filename=None, **kwargs):
        from huggingface_hub.errors import EntryNotFoundError
        self.append(filename)
        raise EntryNotFoundError(f'404 Client Error. Entry Not Found for url: https://hub/{repo_id}/{filename}.\n'
                                 f'Second line of the Hub error.')


def _online(monkeypatch, head, downloads: bool = False):
    """huggingface_hub out of offline mode, its session's HEAD replaced by ``head``; downloads recorded and
    refused unless ``downloads``."""
    import huggingface_hub
    import timm.models._hub as timm_hub

    class Session:
        def head(self, url, timeout=None):
            return head(url)

    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(huggingface_hub, 'get_session', lambda: Session())
    calls = _Calls()
    if not downloads:
        monkeypatch.setattr(timm_hub, 'hf_hub_download', calls)
    return calls


def test_unpublished_tag_fails_fast_when_the_hub_cannot_answer(monkeypatch):
    def unreachable(url):
        raise ConnectionError(f'[Errno -2] Name or service not known: {url}\nsecond line')

    calls = _online(monkeypatch, unreachable)
    with pytest.raises(hub.PretrainedWeightsNotFoundError) as e:
        timm.create_model('mednext_base.sarscov2_ct', pretrained=True, img_size=SIZE)
    assert calls == []  # no download was tried, so none of its retries either
    msg = str(e.value)
    assert 'not yet published' in msg and 'cannot be reached' in msg and 'second line' in msg
    assert all(f'  {k}. ' in msg for k in (1, 2, 3)) and 'pretrained=False' in msg  # the whole message


def test_unpublished_tag_still_asks_a_hub_that_answers(monkeypatch):
    calls = _online(monkeypatch, lambda url: object())
    with pytest.raises(hub.PretrainedWeightsNotFoundError) as e:
        timm.create_model('mednext_base.sarscov2_ct', pretrained=True, img_size=SIZE)
    assert calls == ['model.safetensors', 'pytorch_model.bin']  # one call per file timm tries
    msg = str(e.value)
    assert 'Second line of the Hub error' in msg  # the cause is not cut to its first line
    assert 'not yet published' in msg and '  3. A weights file' in msg


def test_unpublished_tag_in_the_cache_loads_without_the_hub(saved_base, monkeypatch):
    model, folder = saved_base
    hub.seed_hf_cache(folder, f'{HF_HUB_ORG}/mednext_base.sarscov2_ct')
    head_calls = []
    _online(monkeypatch, head_calls.append, downloads=True)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)  # the cached copy needs no network at all
    loaded = timm.create_model('mednext_base.sarscov2_ct', pretrained=True, img_size=SIZE)
    assert head_calls == [] and _same_weights(loaded, model)


def test_wrong_revision_raises(saved_base):
    _, folder = saved_base
    repo = f'{HF_HUB_ORG}/mednext_base.sarscov2_ct'
    hub.seed_hf_cache(folder, repo)
    with pytest.raises(hub.PretrainedWeightsNotFoundError, match='revision v9'):
        timm.create_model('mednext_base.sarscov2_ct', pretrained=True, img_size=SIZE,
                          pretrained_cfg_overlay=dict(hf_hub_id=f'{repo}@v9'))


def test_untagged_model_and_missing_local_weights_raise(tmp_path):
    with pytest.raises(hub.PretrainedWeightsNotFoundError, match='no pretrained weight source'):
        timm.create_model('mednext_tiny', pretrained=True, img_size=SIZE)
    with pytest.raises(hub.PretrainedWeightsNotFoundError, match='local directory'):
        timm.create_model('mednext_tiny', pretrained=True, img_size=SIZE,
                          pretrained_cfg_overlay=dict(source='local-dir', file=os.fspath(tmp_path)))
    with pytest.raises(hub.PretrainedWeightsNotFoundError, match='missing.safetensors'):
        timm.create_model('mednext_tiny', pretrained=True, img_size=SIZE,
                          pretrained_cfg_overlay=dict(file=os.fspath(tmp_path / 'missing.safetensors')))


# --- safe loading ------------------------------------------------------------------------------------------------


def test_wrong_architecture_lists_mismatched_keys(tiny_file):
    _, path = tiny_file
    with pytest.raises(hub.PretrainedMismatchError) as e:  # same depths, other widths
        timm.create_model('mednext_small', pretrained=True, img_size=SIZE, num_classes=4,
                          pretrained_cfg_overlay=dict(file=os.fspath(path), num_classes=4))
    msg = str(e.value)
    assert 'shape mismatches' in msg and 'mednext_small' in msg
    assert 'stem.2.conv.weight: checkpoint (32, 32, 3, 3) vs model (48, 32, 3, 3)' in msg


def test_wrong_depth_raises_even_when_head_is_replaced(tiny_file):
    # a new num_classes makes timm load non-strictly: the missing blocks must still be reported
    _, path = tiny_file
    with pytest.raises(hub.PretrainedMismatchError) as e:
        timm.create_model('mednext_large', pretrained=True, img_size=SIZE, num_classes=3,
                          pretrained_cfg_overlay=dict(file=os.fspath(path), num_classes=4))
    assert 'missing from the checkpoint (160)' in str(e.value) and 'stages.2.blocks.2.norm1.weight' in str(e.value)


def test_other_head_size_is_named(tiny_file):
    _, path = tiny_file  # 4 classes, but the cfg (and so the model) says 1000
    with pytest.raises(hub.PretrainedMismatchError, match='only the classifier differs') as e:
        timm.create_model('mednext_tiny', pretrained=True, img_size=SIZE, pretrained_cfg_overlay=dict(file=path))
    assert 'head.fc.weight: checkpoint (4, 256) vs model (1000, 256)' in str(e.value)


def test_pickle_checkpoint_refused_unless_allowed(tiny_file, tmp_path):
    src, _ = tiny_file
    path = tmp_path / 'whole_model.pth'
    torch.save(src, path)  # the whole module pickled: weights_only loading cannot rebuild it
    overlay = dict(file=os.fspath(path), num_classes=4)
    with pytest.raises(hub.PickleCheckpointError, match='allow_pickle=True'):
        timm.create_model('mednext_tiny', pretrained=True, img_size=SIZE, pretrained_cfg_overlay=overlay)
    with pytest.raises(hub.PickleCheckpointError):
        hub.load_state_dict(path)
    sd = hub.load_state_dict(path, allow_pickle=True)
    model = timm.create_model('mednext_tiny', pretrained=True, img_size=SIZE,
                              pretrained_cfg_overlay=dict(state_dict=sd, num_classes=4))
    assert _same_weights(model, src)
    assert 'state_dict' not in model.pretrained_cfg  # the tensors are not kept alive by the cfg


def test_plain_pth_state_dict_loads_with_weights_only(tiny_file, tmp_path):
    src, _ = tiny_file
    path = tmp_path / 'weights.pth'  # a timm-style training checkpoint: tensors plus argparse args
    torch.save({'model': src.state_dict(), 'args': argparse.Namespace(lr=1e-3), 'epoch': 3}, path)
    assert hub.load_state_dict(path).keys() == src.state_dict().keys()
    model = timm.create_model('mednext_tiny', pretrained=True, img_size=SIZE,
                              pretrained_cfg_overlay=dict(file=os.fspath(path), num_classes=4))
    assert _same_weights(model, src)


# --- save_pretrained / model card -------------------------------------------------------------------------------


def test_model_card_and_config(tmp_path):
    model = timm.create_model('mednext_tiny', img_size=SIZE, num_classes=2)
    out = hub.save_pretrained(model, tmp_path / 'card', dataset='monkeypox_msld',
                              metrics={'f1': 0.91, 'auc': {'value': 0.95, 'ci': (0.9, 0.99)}}, split='80/20, seed 0')
    assert sorted(p.name for p in out.iterdir()) == sorted(hub.HUB_FILES)  # no temp files left behind
    card = (out / 'README.md').read_text()
    assert card.startswith('---\n') and 'library_name: timm' in card and 'license: other' in card
    assert 'Dataset licence: not verified' in card  # an unverified licence is never written as a fact
    assert 'Roy et al.' in card and 'not for diagnosis' in card
    load = card.index('import mednext_zoo, timm')
    assert load < card.index(f'timm.create_model("hf-hub:{HF_HUB_ORG}/mednext_tiny.monkeypox_msld"')
    assert '| 1 | monkeypox |' in card and '80/20, seed 0' in card and '0.9000 - 0.9900' in card
    n_params = sum(p.numel() for p in model.parameters())
    assert f'{n_params / 1e6:.2f} M' in card
    assert 'GFLOPs (fvcore, multiply-adds, batch 1, 3x64x64' in card
    assert '10.1371/journal.pone.0340108' in card
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'mednext_tiny' and config['label_names'] == ['others', 'monkeypox']
    assert config['model_args']['img_size'] == [SIZE, SIZE]


def test_fine_tuned_export_does_not_inherit_tag_labels(tmp_path):
    # mednext_base defaults to the sarscov2_ct cfg; a model trained on other data must not carry its labels/licence
    model = timm.create_model('mednext_tiny', img_size=SIZE, num_classes=2,
                              pretrained_cfg_overlay=pretrained_cfg_kwargs('mednext_base.sarscov2_ct'))
    out = hub.save_pretrained(model, tmp_path / 'own', flops=False)
    config = json.loads((out / 'config.json').read_text())
    assert 'label_names' not in config
    assert not {'label_names', 'license', 'origin_url', 'tag'} & set(config['pretrained_cfg'])
    card = (out / 'README.md').read_text()
    assert 'covid' not in card.lower() and 'No evaluation figures' in card
    assert 'timm.create_model("local-dir:' in card and 'hf-hub:' not in card  # no invented repo


def test_card_for_own_dataset(tmp_path):
    model = timm.create_model('mednext_tiny', img_size=SIZE, num_classes=3, in_chans=1)
    own = dict(name='Hospital X chest CT, 2019-2023', license='internal use only', modality='CT (chest)',
               split='patient-grouped 70/15/15, seed 0', metric_conventions='macro averages over 3 classes')
    out = hub.save_pretrained(model, tmp_path / 'own', dataset=own, label_names=['normal', 'nodule', 'mass'],
                              metrics={'macro F1': 0.7}, repo_id='hospital-x/mednext_tiny-ct', flops=False)
    card = (out / 'README.md').read_text()
    assert '**Hospital X chest CT, 2019-2023**' in card and '| 2 | mass |' in card
    assert 'patient-grouped 70/15/15, seed 0' in card and 'macro averages over 3 classes' in card
    assert 'timm.create_model("hf-hub:hospital-x/mednext_tiny-ct", pretrained=True)' in card
    assert '| Channels | 1 |' in card
    config = json.loads((out / 'config.json').read_text())
    assert config['pretrained_cfg']['license'] == 'internal use only' and config['model_args']['in_chans'] == 1
    with pytest.raises(UserInputError, match='name'):
        hub.save_pretrained(model, tmp_path / 'x', dataset={'url': 'https://example.org'}, flops=False)


def test_label_count_must_match_head(tmp_path):
    model = timm.create_model('mednext_tiny', img_size=SIZE, num_classes=3)
    with pytest.raises(UserInputError, match='3 outputs'):
        hub.save_pretrained(model, tmp_path / 'x', dataset='sarscov2_ct', flops=False)


def test_push_dry_run_uploads_nothing(saved_base, monkeypatch, capsys):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError('dry run touched the Hub API')
    monkeypatch.setattr(huggingface_hub, 'HfApi', no_network)
    _, folder = saved_base
    plan = hub.push_to_hub(folder, f'{HF_HUB_ORG}/mednext_base.sarscov2_ct', dry_run=True)
    assert [p['file'] for p in plan] == list(hub.HUB_FILES)
    out = capsys.readouterr().out
    assert 'Nothing was uploaded' in out and plan[1]['sha256'] in out
    with pytest.raises(UserInputError, match='<arch>.<tag>'):
        hub.push_to_hub(folder, f'{HF_HUB_ORG}/medunext_base.synapse', dry_run=True)


# --- config.json for timm and transformers; folders from before ------------------------------------------------


def test_config_keeps_loader_args_out_of_model_args(tmp_path):
    for arch, n, ds in (('mednext_tiny', 2, 'sarscov2_ct'), ('medunext_tiny', 4, 'acdc')):
        model = timm.create_model(arch, img_size=SIZE, num_classes=n)
        out = hub.save_pretrained(model, tmp_path / arch, dataset=ds, flops=False)
        config = json.loads((out / 'config.json').read_text())
        assert not set(hub.LOADER_ARGS) & set(config['model_args'])  # transformers passes these itself
        assert config['num_classes'] == n and config['label_names'] == list(DATASETS[ds]['label_names'])
        assert config['model_args']['img_size'] == [SIZE, SIZE] and config['model_args']['in_chans'] == model.in_chans
        assert hub.config_problems(out) == []
        loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
        assert _same_weights(loaded, model) and loaded.num_classes == n and loaded.img_size == (SIZE, SIZE)


def test_old_config_loads_in_timm_and_fix_config_is_idempotent(old_style_folder):
    model, folder, old = old_style_folder
    old_sha256 = hashlib.sha256((folder / 'config.json').read_bytes()).hexdigest()
    assert old['model_args']['num_classes'] == 2  # the layout transformers refuses
    assert _same_weights(timm.create_model(f'local-dir:{folder}', pretrained=True), model)

    assert hub.config_problems(folder) == hub.fix_config(folder)
    fixed = json.loads((folder / 'config.json').read_text())
    assert 'num_classes' not in fixed['model_args'] and fixed['num_classes'] == 2
    assert {k: v for k, v in fixed.items() if k != 'model_args'} == {k: v for k, v in old.items() if k != 'model_args'}
    (record,) = json.loads((folder / hub.FIX_RECORD_NAME).read_text())
    assert record['config_before'] == old and len(record['changes']) == 1
    assert 'removed model_args.num_classes' in record['changes'][0]
    assert record['config_sha256_before'] == old_sha256
    assert sorted(os.listdir(folder)) == sorted([*hub.HUB_FILES, hub.FIX_RECORD_NAME])  # no temporary files

    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert hub.fix_config(folder) == []  # idempotent: nothing rewritten, no second record
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files

    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert _same_weights(loaded, model) and loaded.img_size == (SIZE, SIZE)
    assert list(loaded.pretrained_cfg['label_names']) == ['non_covid', 'covid']
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_fix_config_moves_labels_and_class_count_and_refuses_bad_folders(old_style_folder, tmp_path):
    model, folder, config = old_style_folder
    old_text = (folder / 'config.json').read_text()
    config['pretrained_cfg']['label_names'] = config.pop('label_names')  # labels only where timm reads them
    del config['num_classes']  # and the class count only in model_args
    (folder / 'config.json').write_text(json.dumps(config))
    assert len(hub.fix_config(folder)) == 2
    fixed = json.loads((folder / 'config.json').read_text())
    assert fixed['num_classes'] == 2 and fixed['label_names'] == ['non_covid', 'covid']
    assert 'num_classes' not in fixed['model_args']
    assert _same_weights(timm.create_model(f'local-dir:{folder}', pretrained=True), model)

    config['num_classes'] = 3
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(UserInputError, match='inconsistent'):
        hub.fix_config(folder)
    (folder / 'config.json').write_text('{"architecture": ')
    with pytest.raises(UserInputError, match='not valid JSON'):
        hub.fix_config(folder)
    with pytest.raises(UserInputError, match='does not exist'):
        hub.fix_config(tmp_path / 'nowhere')
    # a seeded cache links its files into blobs: fix the folder and seed again instead
    (folder / 'config.json').write_text(old_text)
    snapshot = hub.seed_hf_cache(folder, 'someone/old-model')
    with pytest.raises(UserInputError, match='seed_hf_cache'):
        hub.fix_config(snapshot)


def test_cli_export_fix_config_and_push_refuses_old_folder(old_style_folder, tmp_path, capsys):
    _, folder, _ = old_style_folder
    with pytest.raises(UserInputError, match='--fix-config'):
        hub.push_to_hub(folder, 'someone/mednext_tiny-old', dry_run=True)
    assert cli_main(['export', '--fix-config', os.fspath(folder)]) == 0
    out = capsys.readouterr().out
    assert 'removed model_args.num_classes' in out and hub.FIX_RECORD_NAME in out
    assert cli_main(['export', '--fix-config', os.fspath(folder)]) == 0
    assert 'up to date: nothing changed' in capsys.readouterr().out
    assert cli_main(['push', os.fspath(folder), 'someone/mednext_tiny-old', '--dry-run']) == 0
    assert cli_main(['export', 'mednext_tiny', '--fix-config', os.fspath(folder)]) == 2
    assert 'drop MODEL' in capsys.readouterr().err
    assert cli_main(['export', 'mednext_tiny', os.fspath(tmp_path / 'o')]) == 2
    assert 'export needs --checkpoint' in capsys.readouterr().err


# --- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_list_shows_every_tag_with_real_status(capsys):
    assert cli_main(['list']) == 0
    out = capsys.readouterr().out
    for name in PRETRAINED_TAGS:
        arch, tag = name.split('.')
        line = next(ln for ln in out.splitlines() if ln.startswith(arch + ' ') and f' {tag}' in ln)
        assert 'not yet published' in line and 'not in this build' not in line
    assert '0 of 5 pretrained tags published' in out
    assert cli_main(['list', '--json']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert not any(r['status'] == 'published' for r in rows)


def test_cli_export_then_push_dry_run(tiny_file, tmp_path, capsys):
    src, path = tiny_file
    out = tmp_path / 'export'
    metrics = tmp_path / 'metrics.json'
    metrics.write_text(json.dumps({'dice': 0.8}))
    code = cli_main(['export', 'mednext_tiny', os.fspath(out), '--checkpoint', os.fspath(path), '--num-classes', '4',
                     '--img-size', str(SIZE), '--metrics', os.fspath(metrics), '--no-flops', '--seed-cache',
                     '--repo-id', 'someone/mednext_tiny-test'])
    assert code == 0
    assert _same_weights(timm.create_model(f'local-dir:{out}', pretrained=True), src)
    assert _same_weights(timm.create_model('hf-hub:someone/mednext_tiny-test', pretrained=True), src)  # offline
    assert cli_main(['push', os.fspath(out), 'someone/mednext_tiny-test', '--dry-run']) == 0
    assert 'Nothing was uploaded' in capsys.readouterr().out


def test_cli_export_refuses_pickle_without_flag(tiny_file, tmp_path, capsys):
    src, _ = tiny_file
    path = tmp_path / 'ckpt.pth'
    torch.save(src, path)
    args = ['export', 'mednext_tiny', os.fspath(tmp_path / 'o'), '--checkpoint', os.fspath(path),
            '--num-classes', '4', '--img-size', str(SIZE), '--no-flops']
    assert cli_main(args) == 2
    assert '--allow-pickle' in capsys.readouterr().err
    assert cli_main(args + ['--allow-pickle']) == 0


def test_package_exports():
    assert mednext_zoo.hub is hub
    assert hub.HF_HUB_ORG == HF_HUB_ORG


def test_hub_config_records_the_description_and_loads(tmp_path):
    from mednext_zoo.data.preprocessing import classification_spec
    from mednext_zoo.hub import save_pretrained
    model = timm.create_model('mednext_tiny', img_size=32, num_classes=2, in_chans=1)
    spec = classification_spec(32, 1, (0.5,), (0.25,), 'abdomen')
    save_pretrained(model, tmp_path / 'hub', preprocessing=spec, flops=False)
    config = json.loads((tmp_path / 'hub' / 'config.json').read_text())
    assert config['preprocessing'] == spec.to_dict()
    pcfg = config['pretrained_cfg']  # timm's / transformers' transform agrees with it
    assert pcfg['mean'] == [0.5] and pcfg['std'] == [0.25] and pcfg['crop_pct'] == 1.0 and \
        pcfg['crop_mode'] == 'squash' and pcfg['interpolation'] == 'bilinear'
    assert 'CT window -160..240 HU (abdomen)' in (tmp_path / 'hub' / 'README.md').read_text()
    loaded = timm.create_model(f'local-dir:{tmp_path / "hub"}', pretrained=True)
    assert loaded.in_chans == 1
    with pytest.raises(UserInputError, match='3 input channel'):
        save_pretrained(model, tmp_path / 'bad', preprocessing=classification_spec(32, 3, (0.5,), (0.5,)),
                        flops=False)
    with pytest.raises(UserInputError, match='feeds 64x64 inputs but the model was built for 32x32'):
        save_pretrained(model, tmp_path / 'bad', preprocessing=classification_spec(64, 1, (0.5,), (0.5,)),
                        flops=False)


def test_cli_export_checkpoint_with_labels_and_recipe(tiny_file, tmp_path, capsys):
    """A bare checkpoint gets its label names from --labels and its recipe from --window; without a recipe the
    folder says so (and `export --format` of it will ask for one)."""
    _, path = tiny_file
    base = ['export', 'mednext_tiny', '--checkpoint', os.fspath(path), '--num-classes', '4', '--img-size', str(SIZE),
            '--no-flops']
    assert cli_main(base[:2] + [os.fspath(tmp_path / 'a')] + base[2:] + ['--labels', 'w,x,y,z', '--window',
                                                                           'lung']) == 0
    out = capsys.readouterr().out
    config = json.loads((tmp_path / 'a' / 'config.json').read_text())
    assert config['label_names'] == ['w', 'x', 'y', 'z']
    assert config['preprocessing']['intensity'] == {'mode': 'window', 'low': -1350.0, 'high': 150.0,
                                                    'scale': 'window', 'name': 'lung'}
    assert 'Preprocessing recorded in config.json: CT window -1350..150 HU (lung)' in out
    assert timm.create_model(f'local-dir:{tmp_path / "a"}', pretrained=True).pretrained_cfg['label_names'] == \
        ['w', 'x', 'y', 'z']
    assert cli_main(base[:2] + [os.fspath(tmp_path / 'b')] + base[2:]) == 0
    assert 'no preprocessing is recorded' in capsys.readouterr().out
    assert 'preprocessing' not in json.loads((tmp_path / 'b' / 'config.json').read_text())
    assert cli_main(base[:2] + [os.fspath(tmp_path / 'c')] + base[2:] + ['--labels', 'x,y']) == 2
    assert '2 label names (x, y) for a model with 4 outputs' in capsys.readouterr().err
    assert cli_main(base[:2] + [os.fspath(tmp_path / 'c')] + base[2:] + ['--labels', 'x,x,y,z']) == 2
    assert 'distinct, non-empty class names' in capsys.readouterr().err
