"""Load a fine-tuning run's ``export/`` folder with timm's ``local-dir:`` and classify images with it.

    python load_export.py runs/exp1/export image.png scan.dcm ... [--window lung]

The folder holds config.json (architecture, input size, normalisation, label names), model.safetensors and a
README.md model card; timm rebuilds the model from it, offline. Pass the --window the run was trained with for
DICOM / NIfTI inputs.
"""
import argparse

import timm
import torch

import mednext_zoo  # noqa: F401  (registers mednext_* in timm: import it before create_model)
from mednext_zoo.data import build_transforms, load_image


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('folder', help='an export/ folder (config.json + model.safetensors)')
    p.add_argument('images', nargs='+', help='PNG / JPEG / DICOM / NIfTI files')
    p.add_argument('--window', default=None, help="CT window of the run: 'lung', 'LEVEL,WIDTH', 'file'")
    args = p.parse_args(argv)

    model = timm.create_model(f'local-dir:{args.folder}', pretrained=True).eval()
    cfg = model.pretrained_cfg
    labels = cfg.get('label_names') or [str(i) for i in range(model.num_classes)]
    # the fine-tune's evaluation transform: resize the whole image to the input size, then normalise
    transform = build_transforms(model.img_size[0], cfg['mean'], cfg['std'], train=False)
    results = []
    for path in args.images:
        image = torch.from_numpy(load_image(path, window=args.window))  # H, W or H, W, 3; float in [0, 1]
        x = image[None] if image.ndim == 2 else image.permute(2, 0, 1)  # C, H, W
        x = transform(x.expand(model.in_chans, -1, -1) if x.shape[0] == 1 else x)
        with torch.no_grad():
            probs = model(x[None]).softmax(-1)[0]
        best = int(probs.argmax())
        results.append((path, labels[best], float(probs[best])))
        print(f'{path}: {labels[best]} ({probs[best]:.2f})')
    return results


if __name__ == '__main__':
    main()
