"""The optimised MedNeXt forward paths against the plain reference paths (same weights, same maths).

Each optimised module keeps its plain forward (``forward_reference``); ``set_reference_paths`` sets the
``reference_path`` flag of a whole model. The fused fp32 inference kernels live in ``models/_fused.py``.
Tolerance: max abs difference <= 1e-4 in fp32.
"""
import copy

import pytest
import timm
import torch
import torch.nn as nn

import mednext_zoo.models  # noqa: F401  (registers the models)
from mednext_zoo.models import _fused
from mednext_zoo.models.mednext import LAFFN, SEM, MedBlock, MedStage, set_reference_paths
from tests._perturb import perturb

TOL = 1e-4


def _small(name: str = 'mednext_tiny', **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return perturb(timm.create_model(name, img_size=kwargs.pop('img_size', 64), num_classes=3, **kwargs)).eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_laffn_matches_reference():
    torch.manual_seed(0)
    m = perturb(LAFFN(32))
    x = torch.randn(2, 7, 9, 32)
    with torch.no_grad():
        assert _max_diff(m(x), m.forward_reference(x)) <= TOL


def test_sem_matches_reference_non_square():
    # (2, 10, 13, 24): B H W > 2 C, Wagg folds Wf; (1, 3, 3, 64): small map, Wf applied on its own
    for B, H, W, C in ((2, 10, 13, 24), (1, 3, 3, 64)):
        torch.manual_seed(0)
        m = perturb(SEM(C, (H, W)))
        x = torch.randn(B, H, W, C)
        with torch.no_grad():
            out, ref = m(x), m.forward_reference(x)
        assert out.shape == ref.shape == x.shape
        assert _max_diff(out, ref) <= TOL


def test_sem_folded_biases_matter():
    """The mixing / Wf / Wagg biases folded into one position bias still change the output."""
    torch.manual_seed(0)
    m = perturb(SEM(16, (6, 7)))
    x = torch.randn(1, 6, 7, 16)
    with torch.no_grad():
        before = m(x)
        m.mix_h.bias[3] += 1.0
        after, ref = m(x), m.forward_reference(x)
    assert _max_diff(before, after) > 1e-3
    assert _max_diff(after, ref) <= TOL


def test_sem_wrong_size_raises_clear_error():
    m = SEM(16, (8, 8))
    try:
        m(torch.randn(1, 8, 6, 16))
    except ValueError as e:
        assert '8x8' in str(e) and 'set_input_size' in str(e)
    else:
        raise AssertionError('a wrong feature size must raise')


def test_block_matches_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 16)
    block = perturb(MedBlock(16, (6, 5))).eval()
    with torch.no_grad():
        y = block(x)
        set_reference_paths(block)
        assert _max_diff(y, block(x)) <= TOL


def test_reference_flag_of_one_sub_block_inside_a_fused_block(monkeypatch):
    """A fused block sends each sub-block to its fused form (residual added in the last GEMM) unless that sub-block's
    own ``reference_path`` flag is set: then it runs its plain forward and the block adds the residual."""
    torch.manual_seed(0)
    block = perturb(MedBlock(16, (6, 5))).eval()
    x = torch.randn(2, 6, 5, 16)
    calls = []
    monkeypatch.setitem(_fused.RESIDUAL_FORMS, LAFFN,
                        lambda m, t, s, f=_fused.laffn: calls.append('laffn') or f(m, t, s))
    with torch.no_grad():
        fused = block(x)
        set_reference_paths(block.laffn)
        assert block.laffn.reference_path and not block.reference_path
        mixed = block(x)
    if _fused.ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available():
        assert calls == ['laffn']  # the first call only
    assert _max_diff(fused, mixed) <= TOL


def test_stage_any_input_layout_matches_reference():
    torch.manual_seed(0)
    stage = perturb(MedStage(8, 16, feat_size=(6, 5), depth=2)).eval()
    x = torch.randn(2, 8, 12, 10)
    with torch.no_grad():
        out = stage(x)
        out_cl = stage(x.contiguous(memory_format=torch.channels_last))
        ref = stage.forward_reference(x)
    assert out.shape == ref.shape == (2, 16, 6, 5)
    assert _max_diff(out, ref) <= TOL and _max_diff(out_cl, ref) <= TOL


def test_model_matches_reference_and_switches_back():
    model = _small(img_size=(64, 96))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
        set_reference_paths(model)
        flags = [m.reference_path for m in model.modules() if hasattr(m, 'reference_path')]
        assert len(flags) > 10 and all(flags)  # an explicit flag per module, not a rebound forward
        assert not any('forward' in m.__dict__ or 'forward_features' in m.__dict__ for m in model.modules())
        ref = model(x)
        ref_feats = model.forward_intermediates(x, intermediates_only=True)
        set_reference_paths(model, enable=False)
        assert not any(m.reference_path for m in model.modules() if hasattr(m, 'reference_path'))
        again = model(x)
    assert _max_diff(out, ref) <= TOL and _max_diff(out, again) == 0
    for a, b in zip(feats, ref_feats, strict=True):
        assert a.shape == b.shape and _max_diff(a, b) <= TOL


def test_ablation_variants_match_reference():
    x = torch.randn(1, 3, 64, 64)
    for kwargs in (dict(laffn=False), dict(token_mixer='dwconv'), dict(ffn='mlp')):
        model = _small(**kwargs)
        with torch.no_grad():
            out = model(x)
            ref = set_reference_paths(model)(x)
        assert _max_diff(out, ref) <= TOL, kwargs


def test_same_state_dict_loads_in_both_paths():
    fast, plain = _small(), set_reference_paths(_small())
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.01)
    assert list(fast.state_dict()) == list(plain.state_dict())
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _max_diff(fast(x), plain(x)) <= TOL


def test_training_gradients_match_reference():
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for reference in (False, True):
        model = _small().train()
        if reference:
            set_reference_paths(model)
        model(x).square().sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    fast, ref = grads
    assert fast.keys() == ref.keys()
    for k in fast:
        scale = max(ref[k].abs().max().item(), 1e-3)
        assert _max_diff(fast[k], ref[k]) <= 1e-3 * scale + TOL, k


def test_grad_checkpointing_same_gradients():
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for ckpt in (False, True):
        model = _small().train()
        model.set_grad_checkpointing(ckpt)
        model(x).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert _max_diff(grads[0], grads[1]) <= TOL


def test_laffn_low_precision_keeps_small_product():
    """``softmax_C * softmax_N`` is ~1/(N C): subnormal in fp16 unless scaled by N, as the fast path does.

    Against fp32 maths on the same fp16-rounded weights, an unscaled fp16 product is off by ~1.2%
    here (N C = 2**20); the scaled one by ~0.5% (the fp16 logits' own rounding).
    """
    torch.manual_seed(0)
    half = perturb(LAFFN(64)).half()
    nn.init.zeros_(half.proj.bias)
    x = torch.randn(1, 128, 128, 64).half()
    with torch.no_grad():
        ref = copy.deepcopy(half).float()(x.float())
        out = half(x).float()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert _max_diff(out, ref) / ref.abs().max().item() < 8e-3


def test_bf16_autocast_close_to_fp32():
    model = _small()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert _max_diff(out, ref) <= 0.05 * ref.abs().max().item() + 1e-2


# TorchScript and torch.compile(fullgraph=True) agreement: the capability matrix checks (tests/test_capabilities.py).


def test_jit_tracing_sees_the_plain_graph():
    """fvcore and the legacy ONNX exporter trace: they get the reference ops (BatchNorm, Linear, cat)."""
    model = _small()
    x = torch.randn(1, 3, 64, 64)
    traced = torch.jit.trace(model, (x,))
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert 'aten::batch_norm' in kinds and 'aten::cat' in kinds
    with torch.no_grad():
        assert _max_diff(traced(x), model(x)) <= TOL


def test_meta_device_forward():
    model = timm.create_model('mednext_tiny', img_size=64, num_classes=3, device='meta')
    out = model(torch.randn(2, 3, 64, 64, device='meta'))
    assert out.shape == (2, 3) and out.device.type == 'meta'


@pytest.mark.slow
def test_inductor_compiled_block_matches_eager():
    """Inductor once miscompiled ``add(bias, mm_out, alpha=1/N)`` in LAFFN: guard the block under inductor."""
    torch.manual_seed(0)
    block = perturb(MedBlock(32, (16, 16))).eval()
    x = torch.randn(2, 16, 16, 32)
    with torch.no_grad():
        assert _max_diff(torch.compile(block)(x), block(x)) <= TOL


# ------------------------------------------------------------------ round 2: fused fp32 inference kernels (oneDNN)
def test_stage_batch_slices_match_reference(monkeypatch):
    """Fused inference runs a stage's blocks on slices of the batch: same output as the whole batch."""
    torch.manual_seed(0)
    stage = perturb(MedStage(8, 16, feat_size=(6, 5), depth=2)).eval()
    x = torch.randn(5, 8, 12, 10)
    calls = []
    monkeypatch.setattr(_fused, 'CHUNK_BYTES', 2 * 6 * 5 * 16 * 4)  # two images per slice: 3 slices of 5 images
    monkeypatch.setattr(stage.blocks, 'forward', lambda t, f=stage.blocks.forward: calls.append(len(t)) or f(t))
    with torch.no_grad():
        out, ref = stage(x), stage.forward_reference(x)
    assert sorted(calls[:3]) == [1, 2, 2]
    assert _max_diff(out, ref) <= TOL


def test_stem_batch_slices_match_reference(monkeypatch):
    """Fused inference runs the stem on slices of the batch (its widest activation under STEM_CHUNK_BYTES)."""
    model = _small()
    x = torch.randn(5, 3, 64, 64)
    calls = []
    monkeypatch.setattr(_fused, 'STEM_CHUNK_BYTES', 2 * 32 * 32 * 32 * 4)  # two images of 32 ch at 32 x 32 per slice
    monkeypatch.setattr(_fused, 'stem_layers', lambda m, t, f=_fused.stem_layers: calls.append(len(t)) or f(m, t))
    with torch.no_grad():
        out = model(x)
        ref = set_reference_paths(model)(x)
    assert sorted(calls) == [1, 2, 2]
    assert _max_diff(out, ref) <= TOL


@pytest.mark.parametrize('lever', ['onednn', 'gelu', 'residual', 'chunk', 'packed', 'stem_chunk'])
def test_each_inference_lever_off_matches_reference(lever, monkeypatch):
    """round2.py times the fused path with each lever off: every such setting computes the same outputs."""
    monkeypatch.setitem(_fused.KERNELS, lever, False)
    model = _small()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        ref = set_reference_paths(model)(x)
    assert _max_diff(out, ref) <= TOL


def test_cached_folds_follow_weight_changes():
    """Folded conv-BN and SEM weights are cached for fused inference; new weights (load_state_dict, in-place
    updates such as an EMA's foreach lerp) must never be served from a stale cache."""
    model, other = _small(), perturb(_small(), seed=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(other.state_dict())
        loaded = model(x)
        assert _max_diff(loaded, other(x)) <= TOL and _max_diff(loaded, before) > 1e-3
        torch._foreach_mul_(list(model.parameters()), 1.01)  # in place: the version counters move
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.mul_(1.5)
        scaled = model(x)
        ref = set_reference_paths(model)(x)
    assert _max_diff(scaled, ref) <= TOL and _max_diff(scaled, loaded) > 1e-3


def test_fused_kernels_are_inference_only(monkeypatch):
    """Training (autograd on), autocast and train-mode BatchNorm never reach a fused kernel; no_grad eval does."""
    calls = []

    def spy(fn):
        def wrapped(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(_fused, 'linear', spy(_fused.linear))
    monkeypatch.setattr(_fused, 'conv_bn_fused', spy(_fused.conv_bn_fused))
    model = _small().train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()  # training step
    model.eval()
    model(x).sum().backward()  # eval with autograd (e.g. Grad-CAM)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        model(x)
    assert calls == []
    model.train()
    with torch.no_grad():
        model(x)  # train mode without autograd: BatchNorm normalises with batch statistics, so it is not folded
    assert 'conv_bn_fused' not in calls
    model.eval()
    with torch.no_grad():
        model(x)
    if _fused.ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available():
        assert 'linear' in calls and 'conv_bn_fused' in calls


@pytest.mark.parametrize('batch, size', [(1, 64), (3, 64), (1, (40, 56)), (2, (72, 40))])
def test_prepacked_weights_match_reference_any_batch(batch, size):
    """Prepacked oneDNN weights (GEMMs, conv-BN folds, depth-wise convs) are packed once and serve every batch size:
    batch 1 and batch > 1, odd and non-square inputs, each against the reference path."""
    model = _small(img_size=size)
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        for b in (batch, batch + 2, batch):  # the same cached packs serve another batch size, then the first again
            x = torch.randn(b, 3, h, w)
            out = model(x)
            ref = set_reference_paths(copy.deepcopy(model))(x)
            assert _max_diff(out, ref) <= TOL
    cache = model.stages[0].blocks[0].laffn.proj.__dict__.get('_derived_weights', {})
    if _fused.ONEDNN_PACK_LINEAR is not None and torch.backends.mkldnn.is_available():
        assert cache['packed'][1].is_mkldnn  # the fused path did run on a prepacked weight


def test_model_with_prepacked_weights_deepcopies_and_pickles():
    """Prepacked weights are opaque oneDNN tensors: deepcopy / pickling a model after a fused forward must still work
    (the cache is dropped and rebuilt), and the copy computes the same outputs."""
    import io
    model = _small()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        clone = copy.deepcopy(model)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert _max_diff(clone(x), out) == 0 and _max_diff(loaded(x), out) == 0


def test_model_built_under_inference_mode_runs():
    """Parameters made under ``torch.inference_mode`` have no version counter, so weights derived from them cannot be
    cached safely: such a model takes the unfused paths (it used to raise in the fused path) and matches the
    reference path."""
    with torch.inference_mode():
        torch.manual_seed(0)
        model = perturb(timm.create_model('mednext_tiny', img_size=64, num_classes=3)).eval()
        x = torch.randn(2, 3, 64, 64)
        out = model(x)
        ref = set_reference_paths(copy.deepcopy(model))(x)
    assert _max_diff(out, ref) <= TOL
