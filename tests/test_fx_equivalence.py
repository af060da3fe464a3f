"""FX graphs of MedUNeXt match eager inference, at a tolerance that scales with the output.

timm's ``test_model_forward_fx`` compares the FX-traced graph with eager eval at an absolute 1e-5. FX tracing
records the reference maths, while eager fp32 eval on CPU runs the fused oneDNN path (docs/speed.md); the two agree
to float32 rounding. An untrained MedUNeXt in eval mode has fresh BatchNorm statistics (mean 0, var 1), so with
He-initialised convs its logits reach |10| and float32 rounding alone exceeds 1e-5 absolute there.
.ci/timm_suite.py therefore leaves timm's FX forward test out for ``medunext_*`` and this test checks the same
trace with ``rtol 1e-4`` and an absolute tolerance of 1e-5 times the output's scale. Trained models have real
statistics.
"""
import pytest
import timm
import torch
from timm.models._features_fx import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import mednext_zoo  # noqa: F401  (registers the models)


def _fx(model: torch.nn.Module) -> torch.nn.Module:
    kw = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kw)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=kw)


@pytest.mark.parametrize('name', ['medunext_tiny', 'medunext_tiny_hr', 'medunext_small_hr', 'medunext_base_hr'])
def test_fx_graph_matches_eager_inference(name):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=64).eval()
    x = torch.randn(2, model.in_chans, 64, 64)
    with torch.inference_mode():
        eager = model(x)
        traced = next(iter(_fx(model)(x).values()))
    scale = eager.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-5 * max(1.0, scale))
