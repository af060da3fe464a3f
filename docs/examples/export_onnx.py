"""Export a model to ONNX and run it in onnxruntime.

    python export_onnx.py MODEL OUT.onnx [--img-size 224] [--in-chans 3]
    python export_onnx.py local-dir:runs/exp1/export model.onnx     # a fine-tuned model, with its weights

MedNeXt's input size is fixed (the axial mixing matrices), so the ONNX graph has a fixed H x W and a dynamic batch.
Inside ``export_form(model)`` the MED blocks are traced in the form ONNX Runtime / OpenVINO fuse (1x1 convs,
constant axial MatMuls, folded norms; same function), which is what ``mednext-zoo export --format onnx`` writes.
"""
import argparse

import numpy as np
import onnxruntime as ort
import timm
import torch

import mednext_zoo  # noqa: F401  (registers mednext_* / medunext_* in timm)
from mednext_zoo.models import export_form


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('model', help="architecture (random weights) or 'local-dir:FOLDER' / 'hf-hub:REPO' (trained)")
    p.add_argument('out', help='ONNX file to write')
    p.add_argument('--img-size', type=int, default=None, help='input side (default: the model\'s own)')
    p.add_argument('--in-chans', type=int, default=None)
    args = p.parse_args(argv)

    pretrained = args.model.startswith(('local-dir:', 'hf-hub:'))
    kwargs = {k: v for k, v in dict(img_size=args.img_size, in_chans=args.in_chans).items() if v is not None}
    model = timm.create_model(args.model, pretrained=pretrained, **kwargs).eval()
    x = torch.randn(2, model.in_chans, *model.img_size)  # B, C, H, W

    # dynamo=False: torch's TorchScript-based exporter (deprecated, still the one that needs no extra package;
    # the torch.export-based one, dynamo=True, needs `pip install onnxscript`)
    with export_form(model):  # the deploy form of the MED blocks; without it, the plain traced graph
        torch.onnx.export(model, (x,), args.out, input_names=['image'], output_names=['logits'],
                          dynamic_axes={'image': {0: 'batch'}, 'logits': {0: 'batch'}}, dynamo=False)

    session = ort.InferenceSession(args.out, providers=['CPUExecutionProvider'])
    batch = np.random.default_rng(0).standard_normal((3, *x.shape[1:]), dtype=np.float32)  # another batch size
    onnx_logits = session.run(None, {'image': batch})[0]
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(batch)).numpy()
    diff = float(np.abs(onnx_logits - torch_logits).max())
    print(f'{args.out}: logits {onnx_logits.shape}, max |onnxruntime - PyTorch| = {diff:.2e}')
    return diff


if __name__ == '__main__':
    main()
