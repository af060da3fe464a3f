"""Compare the params and FLOPs of your own timm model with MedNeXt, using mednext-zoo's benchmark harness.

    python compare_flops.py [SIZE] [REFERENCE]      # default: 224 mednext_base

Register your model in timm (``@register_model``), then name it beside the MedNeXt models. The harness counts
params and FLOPs with fvcore (one multiply-add = one FLOP, batch 1) and reports every ratio to the reference model
measured in the same run. It also times each model; the --quick settings keep that short.
"""
import sys

import timm
import torch.nn as nn
from timm.models import register_model

from mednext_zoo.benchmark import run_benchmark


class MyCNN(nn.Module):
    """A small VGG-style classifier: ``B, in_chans, H, W`` -> ``B, num_classes``."""

    def __init__(self, num_classes=1000, in_chans=3, width=32, **kwargs):
        super().__init__()
        layers, chs = [], in_chans
        for i in range(4):
            layers += [nn.Conv2d(chs, width * 2 ** i, 3, stride=2, padding=1), nn.BatchNorm2d(width * 2 ** i),
                       nn.ReLU(inplace=True)]
            chs = width * 2 ** i
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chs, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


@register_model
def my_cnn(pretrained=False, **kwargs):
    return MyCNN(**kwargs)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    size = int(argv[0]) if argv else 224
    reference = argv[1] if len(argv) > 1 else 'mednext_base'
    assert timm.is_model('my_cnn')
    result = run_benchmark(models=['my_cnn', reference], reference=reference, img_size=size, num_classes=2,
                           quick=True, rounds=1, latency_iters=1, measure_memory=False, progress=False)
    print(f'{"model":14s} {"params (M)":>10s} {"GFLOPs":>8s} {"params ratio":>12s} {"FLOPs ratio":>11s}')
    for r in result.rows:  # ratios to the reference model
        print(f'{r["name"]:14s} {r["params_m"]:10.2f} {r["gflops"]:8.3f} {r["params_ratio"]:12.2f} '
              f'{r["gflops_ratio"]:11.2f}')
    return result


if __name__ == '__main__':
    main()
