"""MedNeXt family: sizes, the timm model contract, resolution rules, mixed precision, export."""
import pytest
import timm
import torch
from fvcore.nn import FlopCountAnalysis

import mednext_zoo
from mednext_zoo.models.mednext import LAFFN, MedNeXt, checkpoint_filter_fn, feature_sizes

FAMILY = ['mednext_tiny', 'mednext_small', 'mednext_base', 'mednext_large']


def fvcore_gflops(model, x):
    fa = FlopCountAnalysis(model.eval(), x)
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    return fa.total() / 1e9


def small(name='mednext_tiny', **kwargs):
    return timm.create_model(name, img_size=kwargs.pop('img_size', 64), **kwargs).eval()


def test_version_and_registry():
    assert mednext_zoo.__version__
    assert timm.list_models('mednext*') == sorted(FAMILY)
    assert isinstance(timm.create_model('mednext_base', num_classes=2), MedNeXt)


def test_mednext_base_matches_paper_size():
    model = timm.create_model('mednext_base', num_classes=2)
    params = sum(p.numel() for p in model.parameters())
    gflops = fvcore_gflops(model, torch.randn(1, 3, 224, 224))
    assert abs(params / 10.72e6 - 1) <= 0.02, params
    assert abs(gflops / 1.90 - 1) <= 0.02, gflops


def test_family_grows_monotonically():
    params = [sum(p.numel() for p in timm.create_model(n, num_classes=2).parameters()) for n in FAMILY]
    assert params == sorted(params) and len(set(params)) == 4


@pytest.mark.parametrize('img_size', [224, 256, 512, (256, 320)])
def test_base_runs_at_its_built_size(img_size):
    model = timm.create_model('mednext_base', num_classes=3, img_size=img_size).eval()
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.shape == (1, 3)
    assert model.pretrained_cfg['input_size'] == (3, h, w)


@pytest.mark.parametrize('img_size', [200, 250])
def test_sizes_not_divisible_by_32(img_size):
    model = small(img_size=img_size, num_classes=2)
    feats = model.forward_intermediates(torch.randn(1, 3, img_size, img_size), intermediates_only=True)
    expected = feature_sizes(img_size, 5)[1:]
    assert [tuple(f.shape[-2:]) for f in feats] == expected


def test_wrong_size_error_names_built_size_and_fix():
    model = timm.create_model('mednext_base').eval()
    with pytest.raises(ValueError, match=r'built for 224x224 inputs got 256x256.*img_size'):
        model(torch.randn(1, 3, 256, 256))


def test_volume_and_channel_errors():
    model = small()
    with pytest.raises(ValueError, match='2D model'):
        model(torch.randn(1, 3, 8, 64, 64))
    with pytest.raises(ValueError, match='in_chans=1'):
        model(torch.randn(1, 1, 64, 64))


def test_one_channel_input():
    model = small(in_chans=1, num_classes=2)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 2)
    assert model.pretrained_cfg['input_size'] == (1, 64, 64)


def test_timm_head_api():
    model = small(num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.get_classifier().out_features == 5
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    model.reset_classifier(0, '')
    assert model(x).shape == (2, model.num_features, 2, 2)


def test_features_only_for_encoders():
    model = timm.create_model('mednext_tiny', img_size=64, features_only=True, out_indices=(0, 1, 2, 3))
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == model.feature_info.channels() == [32, 64, 128, 256]
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]


def test_forward_intermediates_and_prune():
    model = small()
    x = torch.randn(1, 3, 64, 64)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 4 and torch.allclose(final, model.forward_features(x))
    kept = model.prune_intermediate_layers([1])
    assert kept == [1] and len(model.stages) == 2
    assert model.forward_intermediates(x, indices=[1], intermediates_only=True)[0].shape == (1, 64, 8, 8)


def test_grad_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    model = small(num_classes=3, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    assert torch.allclose(ref, out, atol=1e-6)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_group_matcher_and_no_weight_decay():
    from timm.models._manipulate import group_parameters

    model = small()
    groups = group_parameters(model, model.group_matcher(), reverse=True)
    assert len(set(groups.values())) >= 5  # stem, downsamples, blocks
    assert model.no_weight_decay() == set()


def test_drop_path_is_stochastic_in_train_mode():
    model = small(drop_path_rate=0.5).train()
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)


def test_device_and_dtype_kwargs():
    model = timm.create_model('mednext_tiny', img_size=64, device='meta', dtype=torch.bfloat16)
    assert {p.device.type for p in model.parameters()} == {'meta'}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_set_input_size_resamples_mixing_and_keeps_frozen():
    model = small()
    sem = model.stages[0].blocks[0].token_mixer
    with torch.no_grad():
        sem.mix_h.weight.fill_(0.5)  # 16 x 16 at 64 px: every row sums to 8
    model.requires_grad_(False)
    model.set_input_size(img_size=(96, 128))
    sem = model.stages[0].blocks[0].token_mixer
    assert sem.mix_h.weight.shape == (24, 24) and sem.mix_w.weight.shape == (32, 32)
    assert torch.allclose(sem.mix_h.weight.sum(dim=1), torch.full((24,), 8.0))  # row sums kept
    assert not any(p.requires_grad for p in model.parameters())
    assert model(torch.randn(1, 3, 96, 128)).shape == (1, 1000)


def test_checkpoint_filter_resamples_weights_from_another_size():
    src = small(num_classes=2)
    dst = timm.create_model('mednext_tiny', img_size=96, num_classes=2)
    sd = checkpoint_filter_fn({'state_dict': src.state_dict()}, dst)
    dst.load_state_dict(sd, strict=True)
    assert torch.equal(dst.stem[0].conv.weight, src.stem[0].conv.weight)
    assert dst.stages[0].blocks[0].token_mixer.mix_h.weight.shape == (24, 24)


def test_autocast_matches_fp32():
    torch.manual_seed(0)
    model = small(num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            amp = model(x)
    assert amp.dtype in (torch.float32, torch.bfloat16)
    assert torch.allclose(amp.float(), ref, atol=0.05 * ref.abs().max().item())


def test_laffn_product_does_not_underflow_in_fp16():
    """softmax_C * softmax_N is ~1/(N C): subnormal in fp16 unless scaled, as LAFFN does."""
    torch.manual_seed(0)
    laffn = LAFFN(256)
    x = torch.randn(1, 56, 56, 256)
    with torch.no_grad():
        ref = laffn(x) - laffn.proj.bias
        with torch.autocast('cpu', dtype=torch.float16):
            amp = laffn(x) - laffn.proj.bias
    rel = (amp.float() - ref).abs().max() / ref.abs().max()
    assert rel < 1e-2, rel


def test_bf16_model_keeps_dtype():
    model = small().to(torch.bfloat16)
    assert model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


# TorchScript, torch.compile(fullgraph=True) and ONNX Runtime (dynamic batch) agree with eager for every registered
# model in one place: the capability matrix checks (tests/test_capabilities.py, mednext_zoo.benchmark.capabilities).


