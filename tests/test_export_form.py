"""The export form of the MED blocks (``mednext_zoo.models._export_form``): the graph ``export --format`` writes.

Same function as the reference path for every registered model (traced inside ``export_form`` against the eager
reference path), ``state_dict`` untouched, and the ONNX graph really has the form the runtimes fuse.
"""
import pytest
import timm
import torch
import torch.nn as nn

import mednext_zoo.models  # noqa: F401  (registers the models)
from mednext_zoo.models._export_form import FORM, export_form, export_form_active
from mednext_zoo.models.mednext import set_reference_paths

REGISTERED = timm.list_models('mednext*') + timm.list_models('medunext*')
TOL = 1e-4  # relative to the largest logit


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny inputs: one thread is faster than two and does not stall on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero biases, LayerNorm affines and BatchNorm statistics (init leaves them trivial), so every fold counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {'img_size': 32, 'num_classes': 3, **kwargs}
    if name.startswith('medunext'):
        kwargs.setdefault('in_chans', 1)
    return _perturb(timm.create_model(name, **kwargs)).eval()


def _traced(model: nn.Module, x: torch.Tensor, **levers) -> torch.Tensor:
    with export_form(model, **levers), torch.no_grad():
        traced = torch.jit.trace(model, (x[:1],), check_trace=False)
    with torch.no_grad():
        return traced(x)


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = set_reference_paths(model)(x)
    set_reference_paths(model, enable=False)
    return out


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


@pytest.mark.parametrize('name', REGISTERED)
def test_export_form_matches_reference_path(name):
    model = _build(name)
    x = torch.randn(3, model.in_chans, 32, 32)  # batch 3 through a graph traced at batch 1: no baked batch size
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = _traced(model, x)
    assert _close(out, _reference(model, x)) <= TOL
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any('_export_form_consts' in m.__dict__ for m in model.modules())  # nothing left behind


@pytest.mark.parametrize('levers', [
    dict(layernorm='transpose', softmax_c='op', softmax_n='reduce'),
    dict(layernorm='l2'),
    dict(fold_ln=False, agg='concat', merge=True, proj='matmul'),
    dict(fold_up_bn=False),
])
def test_every_lever_keeps_the_function(levers):
    for name in ('mednext_tiny', 'medunext_tiny_hr'):
        model = _build(name)
        x = torch.randn(2, model.in_chans, 32, 32)
        assert _close(_traced(model, x, **levers), _reference(model, x)) <= TOL, (name, levers)
    assert FORM['merge'] is False  # the levers are restored on exit


@pytest.mark.parametrize('kwargs', [dict(laffn=False), dict(token_mixer='dwconv'), dict(ffn='mlp')])
def test_ablation_blocks_keep_the_function(kwargs):
    model = _build('mednext_tiny', **kwargs)
    x = torch.randn(2, 3, 32, 32)
    assert _close(_traced(model, x), _reference(model, x)) <= TOL


def test_only_tracing_inside_the_context_sees_it():
    model = _build('mednext_tiny')
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eager = model(x)
    with export_form(model):
        assert export_form_active()
        with torch.no_grad():
            assert torch.equal(model(x), eager)  # eager forward unchanged inside the block
    assert not export_form_active()
    traced = torch.jit.trace(model, (x[:1],), check_trace=False)  # outside: the plain graph (fvcore, old exports)
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert 'aten::cat' in kinds and 'aten::linear' in kinds
    with pytest.raises(ValueError, match='unknown export-form levers'):
        with export_form(model, fuse_everything=True):
            pass


def test_onnx_graph_has_the_export_form(tmp_path):
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    from mednext_zoo.deploy._onnx import export_onnx

    def ops(model, **form):
        path = export_onnx(model, tmp_path / 'm.onnx', torch.randn(1, model.in_chans, 32, 32), form=form)
        return [n.op_type for n in onnx.load(str(path)).graph.node]

    cls = _build('mednext_tiny')
    ref, new = ops(cls, layout='reference'), ops(cls)
    # the plain graph: Linear layers between transposes, concatenations, reshapes computed from Shape
    assert ref.count('Transpose') > 20 and 'Concat' in ref and 'Shape' in ref
    # the export form: every projection a Conv, no runtime-computed shapes, no concatenation; the only Transposes
    # are the classifier head's LayerNorm2d (on the pooled B, C, 1, 1 map)
    assert new.count('Transpose') <= 2 and 'Concat' not in new and 'Shape' not in new and 'Gather' not in new
    assert new.count('MatMul') == 2 * 8 and new.count('Conv') > ref.count('Conv') + 8 * 10
    seg = _build('medunext_tiny')
    assert 'BatchNormalization' in ops(seg, layout='reference') and 'BatchNormalization' not in ops(seg)


def test_every_lever_exports_to_onnx_runtime(tmp_path):
    """The benchmark builds every lever as a real ONNX file: each must export (constant shapes) and run the same."""
    ort = pytest.importorskip('onnxruntime')
    from mednext_zoo.deploy._onnx import export_onnx
    model = _build('mednext_tiny')
    x = torch.randn(2, 3, 32, 32)
    ref = _reference(model, x)
    for i, form in enumerate([dict(layernorm='transpose', softmax_c='op', softmax_n='reduce'),
                              dict(fold_ln=False, agg='concat', merge=True, proj='matmul', layernorm='l2')]):
        path = export_onnx(model, tmp_path / f'{i}.onnx', x[:1], form=form)
        out = ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(None, {'x': x.numpy()})[0]
        assert _close(torch.from_numpy(out), ref) <= TOL, form
