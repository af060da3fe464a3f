"""MedUNeXt: sizes, shapes, input rules, pad helper, resolution changes, precision and export."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import mednext_zoo  # noqa: F401  (registers the models)
from mednext_zoo.errors import UserInputError
from mednext_zoo.models.mednext import MedBlock, resample_axial_weight
from mednext_zoo.models.medunext import (
    SYNAPSE_LABELS,
    MedUNeXt,
    checkpoint_filter_fn,
    crop_to_size,
    nearest_valid_sizes,
    pad_to_valid_size,
)

SMALL = 64  # img_size for fast tests (bottleneck 2x2)


@pytest.fixture(scope='module')
def base() -> MedUNeXt:
    torch.manual_seed(0)
    return timm.create_model('medunext_base', in_chans=1, num_classes=9).eval()


@pytest.fixture(scope='module')
def tiny() -> MedUNeXt:
    torch.manual_seed(0)
    return timm.create_model('medunext_tiny', img_size=SMALL).eval()


def _flops(model: nn.Module, x: torch.Tensor) -> float:
    from fvcore.nn import FlopCountAnalysis
    fa = FlopCountAnalysis(model, x)
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    return fa.total()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_and_cfgs():
    names = timm.list_models('medunext*')
    for name in ('medunext_tiny', 'medunext_small', 'medunext_base', 'medunext_large'):
        assert name in names
    cfg = timm.get_pretrained_cfg('medunext_base').to_dict()
    assert cfg['input_size'] == (1, 224, 224)
    assert cfg['num_classes'] == 9
    assert cfg['fixed_input_size'] is True
    assert tuple(cfg['label_names']) == SYNAPSE_LABELS == (
        'background', 'aorta', 'gallbladder', 'left kidney', 'right kidney', 'liver', 'pancreas', 'spleen', 'stomach')
    assert len(cfg['mean']) == len(cfg['std']) == 1


def test_cfg_keys_point_at_modules(tiny):
    cfg = tiny.pretrained_cfg
    first = tiny.get_submodule(cfg['first_conv'])
    assert isinstance(first, nn.Conv2d) and first.in_channels == tiny.in_chans
    head = tiny.get_submodule(cfg['classifier'])
    assert head is tiny.get_classifier()
    assert isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.out_channels == 9


def test_base_params_flops_and_output(base):
    params = _params(base)
    assert abs(params - 39.85e6) / 39.85e6 <= 0.02, params
    x = torch.zeros(1, 1, 224, 224)
    assert _flops(base, x) <= 6.0e9
    with torch.no_grad():
        y = base(torch.randn(1, 1, 224, 224))
    assert y.shape == (1, 9, 224, 224)
    assert torch.isfinite(y).all()


def test_family_is_ordered_by_size():
    sizes = []
    for name in ('medunext_tiny', 'medunext_small', 'medunext_base', 'medunext_large'):
        model = timm.create_model(name, img_size=SMALL, device='meta')
        sizes.append(_params(model))
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_200_input_gives_clear_error(base):
    with pytest.raises(UserInputError, match=r'multiple of .*32') as err:
        base(torch.zeros(1, 1, 200, 200))
    msg = str(err.value)
    assert '192' in msg and '224' in msg and 'pad_to_valid_size' in msg
    assert isinstance(err.value, ValueError)


def test_bad_img_size_and_inputs(tiny):
    with pytest.raises(UserInputError, match=r'224 or 256'):
        timm.create_model('medunext_tiny', img_size=(192, 250))
    with pytest.raises(UserInputError, match=r'built for 64x64.*set_input_size'):
        tiny(torch.zeros(1, 1, 96, 96))
    with pytest.raises(UserInputError, match='in_chans=3'):
        tiny(torch.zeros(1, 3, SMALL, SMALL))
    with pytest.raises(UserInputError, match='4-D'):
        tiny(torch.zeros(1, 1, 4, SMALL, SMALL))


def test_nearest_valid_sizes():
    assert nearest_valid_sizes(200) == (192, 224)
    assert nearest_valid_sizes(224) == (224, 224)
    assert nearest_valid_sizes(10) == (32, 32)


@pytest.mark.parametrize('shape', [(1, 1, 200, 200), (2, 3, 50, 61), (1, 1, 64, 33)])
def test_pad_helper_round_trip(shape):
    x = torch.randn(shape)
    xp, padding = pad_to_valid_size(x, 32)
    assert xp.shape[-2] % 32 == 0 and xp.shape[-1] % 32 == 0
    assert xp.shape[-2] - x.shape[-2] < 32 and xp.shape[-1] - x.shape[-1] < 32
    assert torch.equal(crop_to_size(xp, padding), x)
    # padding is zeros outside the image
    assert xp.abs().sum() == pytest.approx(x.abs().sum().item(), rel=1e-6)
    for mode in ('reflect', 'replicate'):
        xr, padding = pad_to_valid_size(x, mode=mode)
        assert xr.shape == xp.shape
        assert torch.equal(crop_to_size(xr, padding), x)
    xr, padding = pad_to_valid_size(x, size=(256, 256), mode='replicate')
    assert xr.shape[-2:] == (256, 256)
    assert torch.equal(crop_to_size(xr, padding), x)


def test_pad_helper_rejects_smaller_target():
    with pytest.raises(UserInputError, match='smaller'):
        pad_to_valid_size(torch.zeros(1, 1, 100, 100), size=64)
    with pytest.raises(UserInputError, match='replicate'):
        pad_to_valid_size(torch.zeros(1, 1, 10, 10), size=64, mode='reflect')


def test_forward_padded(tiny):
    x = torch.randn(1, 1, 50, 61)
    with torch.no_grad():
        y = tiny.forward_padded(x)
        xp, padding = pad_to_valid_size(x, size=tiny.img_size)
        ref = crop_to_size(tiny(xp), padding)
    assert y.shape == (1, 9, 50, 61)
    torch.testing.assert_close(y, ref)
    with pytest.raises(UserInputError, match='larger'):
        tiny.forward_padded(torch.zeros(1, 1, 65, 10))


def test_three_channel_input():
    model = timm.create_model('medunext_tiny', in_chans=3, num_classes=4, img_size=SMALL).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, SMALL, SMALL))
    assert y.shape == (2, 4, SMALL, SMALL)
    assert model.get_submodule(model.pretrained_cfg['first_conv']).in_channels == 3


def test_encoder_features(tiny):
    x = torch.randn(2, 1, SMALL, SMALL)
    with torch.no_grad():
        feats = tiny.forward_encoder(x)
        final, inter = tiny.forward_intermediates(x)
        only = tiny.forward_intermediates(x, indices=[1, 3], intermediates_only=True, stop_early=True)
        ref = tiny(x)
    assert len(feats) == len(tiny.feature_info) == 5
    for f, info in zip(feats, tiny.feature_info, strict=True):
        assert f.shape == (2, info['num_chs'], SMALL // info['reduction'], SMALL // info['reduction'])
    assert [i['reduction'] for i in tiny.feature_info] == [2, 4, 8, 16, 32]
    torch.testing.assert_close(final, tiny.forward_features(x))
    torch.testing.assert_close(tiny.forward_head(final), ref)
    assert final.shape == (2, tiny.num_features, SMALL, SMALL)
    for a, b in zip(inter, feats, strict=True):
        torch.testing.assert_close(a, b)
    assert [o.shape for o in only] == [feats[1].shape, feats[3].shape]
    torch.testing.assert_close(tiny.forward_head(tiny.forward_decoder(feats)), ref)


def test_prune_intermediate_layers(tiny):
    import copy
    x = torch.randn(1, 1, SMALL, SMALL)
    with torch.no_grad():
        taps = tiny.forward_encoder(x)
        ref = tiny(x)
        kept = copy.deepcopy(tiny)
        assert kept.prune_intermediate_layers([4], prune_head=False) == [4]
        torch.testing.assert_close(kept(x), ref)
        pruned = copy.deepcopy(tiny)
        assert pruned.prune_intermediate_layers([2]) == [2]
        torch.testing.assert_close(pruned.forward_features(x), taps[2])
        torch.testing.assert_close(pruned.forward_intermediates(x, indices=[2], intermediates_only=True)[0], taps[2])
    assert len(pruned.stages) == 3 and len(pruned.decoder) == 0 and pruned.num_features == 64


def test_features_only():
    model = timm.create_model('medunext_tiny', img_size=SMALL, features_only=True, out_indices=(2, 3, 4)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 1, SMALL, SMALL))
    assert [f.shape[1] for f in feats] == model.feature_info.channels() == [64, 192, 288]
    assert model.feature_info.reduction() == [8, 16, 32]


def test_train_step_and_grad_checkpointing():
    torch.manual_seed(0)
    model = timm.create_model('medunext_tiny', img_size=SMALL, num_classes=3, drop_path_rate=0.1)
    rates = [float(getattr(b.drop_path, 'drop_prob', 0.)) for b in model.stages[3].blocks]
    dec_rates = [float(getattr(b.drop_path, 'drop_prob', 0.)) for b in model.decoder[0].stage.blocks]
    assert dec_rates == rates[::-1] and max(rates) > 0
    x = torch.randn(2, 1, SMALL, SMALL)
    target = torch.randint(0, 3, (2, SMALL, SMALL))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), ref)


def test_reset_classifier(tiny):
    model = timm.create_model('medunext_tiny', img_size=SMALL)
    model.reset_classifier(4)
    assert model(torch.randn(1, 1, SMALL, SMALL)).shape == (1, 4, SMALL, SMALL)
    assert model.num_classes == 4


def test_ablation_switches_pass_through():
    kw = dict(img_size=SMALL, device='meta')
    full = timm.create_model('medunext_small', **kw)
    baseline = timm.create_model('medunext_small', laffn=False, token_mixer='dwconv', ffn='mlp', **kw)
    sdffn_only = timm.create_model('medunext_small', laffn=False, token_mixer='dwconv', **kw)
    blocks = [m for m in baseline.modules() if isinstance(m, MedBlock)]
    assert blocks and all(b.laffn is None for b in blocks)
    assert _params(sdffn_only) < _params(baseline) < _params(full)
    model = timm.create_model('medunext_tiny', img_size=SMALL, laffn=False, token_mixer='dwconv', ffn='mlp').eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, SMALL, SMALL)).shape == (1, 9, SMALL, SMALL)


def test_set_input_size(tiny):
    model = timm.create_model('medunext_tiny', img_size=SMALL).eval()
    old_mix = model.stages[3].blocks[0].token_mixer.mix_h.weight.detach().clone()
    model.set_input_size(img_size=(96, 128))
    assert model.img_size == (96, 128)
    assert model.pretrained_cfg['input_size'] == (1, 96, 128)
    mix_h = model.stages[3].blocks[0].token_mixer.mix_h.weight
    assert mix_h.shape == (6, 6)
    torch.testing.assert_close(mix_h, resample_axial_weight(old_mix, 6))
    assert model.decoder[0].stage.blocks[0].token_mixer.mix_w.weight.shape == (8, 8)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 128)).shape == (1, 9, 96, 128)
    with pytest.raises(UserInputError, match='multiple'):
        model.set_input_size(img_size=100)


def test_checkpoint_resampled_on_load(tmp_path, tiny):
    from safetensors.torch import save_file
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    path = tmp_path / 'medunext_tiny.safetensors'
    save_file(sd, str(path))
    # through timm's own pretrained path, at another input size
    model = timm.create_model(
        'medunext_tiny', pretrained=True, img_size=96, pretrained_cfg_overlay=dict(file=str(path)),
    ).eval()
    key = 'stages.4.blocks.0.token_mixer.mix_w.weight'
    assert model.state_dict()[key].shape == (3, 3)
    torch.testing.assert_close(model.state_dict()[key], resample_axial_weight(sd[key], 3))
    torch.testing.assert_close(model.state_dict()['head.weight'], sd['head.weight'])
    # the filter also unwraps training checkpoints
    filtered = checkpoint_filter_fn({'state_dict': {'module.' + k: v for k, v in sd.items()}}, model)
    assert model.load_state_dict(filtered, strict=True)
    # same size: loading gives the same network
    same = timm.create_model('medunext_tiny', pretrained=True, img_size=SMALL,
                             pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 1, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(same(x), tiny(x))


def test_bf16_autocast_matches_fp32(tiny):
    torch.manual_seed(1)
    x = torch.randn(2, 1, SMALL, SMALL)
    with torch.no_grad():
        ref = tiny(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = tiny(x)
    assert torch.isfinite(out).all()
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.03, rel
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean() > 0.9


def test_group_matcher_orders_encoder_decoder_head(tiny):
    from timm.models._manipulate import group_parameters
    groups = group_parameters(tiny, tiny.group_matcher())
    first = [names[0].split('.')[0] + '.' + names[0].split('.')[1] for names in groups.values()]
    assert first == ['stages.0', 'stages.1', 'stages.2', 'stages.3', 'stages.4',
                     'decoder.0', 'decoder.1', 'decoder.2', 'decoder.3', 'final_up.conv']
    assert sum(len(v) for v in groups.values()) == len(list(tiny.parameters()))


def test_pretrained_file_adapts_channels_and_classes(tmp_path, tiny):
    from safetensors.torch import save_file
    path = tmp_path / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    model = timm.create_model('medunext_tiny', pretrained=True, in_chans=3, num_classes=4, img_size=SMALL,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    key = 'stages.0.blocks.0.conv.weight'
    assert model.state_dict()[key].shape[1] == 3
    # timm spreads the 1-channel kernel over 3 channels: their sum equals the original kernel
    torch.testing.assert_close(model.state_dict()[key].sum(1), tiny.state_dict()[key][:, 0])
    torch.testing.assert_close(model.state_dict()['stages.3.blocks.0.laffn.proj.weight'],
                               tiny.state_dict()['stages.3.blocks.0.laffn.proj.weight'])
    assert model(torch.randn(1, 3, SMALL, SMALL)).shape == (1, 4, SMALL, SMALL)


def test_hr_variant_card_says_it_is_ours_and_not_roy_et_al():
    from mednext_zoo.hub.card import render_model_card
    kw = dict(repo_id=None, task='segmentation', input_size=(1, 64, 64), mean=(0.,), std=(1.,),
              interpolation='bilinear', label_names=['background', 'liver'], num_params=10, gflops=None)
    hr, paper = render_model_card(arch='medunext_tiny_hr', **kw), render_model_card(arch='medunext_tiny', **kw)
    assert 'Not Roy et al.' in hr and 'Not Roy et al.' in paper
    assert "A variant of ours, not the paper's" in hr and "A variant of ours" not in paper
