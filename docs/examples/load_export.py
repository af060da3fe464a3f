"""Load a fine-tuning run's ``export/`` folder with timm's ``local-dir:`` and classify images with it.

    python load_export.py runs/exp1/export image.png scan.dcm ...

The folder holds config.json (architecture, input size, label names and, under "preprocessing", the input recipe
the run trained with: CT window, resize, channels, mean / std), model.safetensors and a README.md model card; timm
rebuilds the model from it, offline, and ``mednext_zoo.deploy.preprocess`` reads each file with the recorded
recipe (the run's --window included), so nothing has to be passed again by hand.
"""
import argparse

import timm
import torch

import mednext_zoo  # noqa: F401  (registers mednext_* in timm: import it before create_model)
from mednext_zoo.deploy import preprocess


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('folder', help='an export/ folder (config.json + model.safetensors)')
    p.add_argument('images', nargs='+', help='PNG / JPEG / DICOM / NIfTI files')
    args = p.parse_args(argv)

    model = timm.create_model(f'local-dir:{args.folder}', pretrained=True).eval()
    labels = model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)]
    results = []
    for path in args.images:
        x = torch.from_numpy(preprocess(path, args.folder))  # N, C, H, W: the run's own recipe (N slices of a NIfTI)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        best = int(probs.argmax())
        results.append((path, labels[best], float(probs[best])))
        print(f'{path}: {labels[best]} ({probs[best]:.2f})')
    return results


if __name__ == '__main__':
    main()
