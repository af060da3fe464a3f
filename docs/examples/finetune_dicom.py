"""Fine-tune MedNeXt on a folder of DICOM slices, one sub-folder per class.

    DATA/
      covid/      slice_001.dcm, slice_002.dcm, ...
      non_covid/  slice_101.dcm, ...

    python finetune_dicom.py DATA runs/dicom --model mednext_tiny --epochs 20 --img-size 224

DICOM pixels are read as Hounsfield units (RescaleSlope / Intercept applied) and windowed with --window (a CT preset:
lung, mediastinum, abdomen, brain or bone; 'LEVEL,WIDTH' in HU; or 'file' for the file's own window; default: min-max
per slice). The run folder gets metrics.json (test metrics with 95% CIs), checkpoints and export/ (loadable with
timm's local-dir:).
"""
import argparse

from mednext_zoo.data.io import CT_WINDOWS, parse_window
from mednext_zoo.errors import UserInputError
from mednext_zoo.finetune import ClassificationConfig, fit


def window(text):
    """--window, checked here so that a typo is a usage message, not a traceback from inside the run."""
    try:
        parse_window(text)
    except UserInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('data', help='folder with one sub-folder of .dcm files per class')
    p.add_argument('out', help='run folder to create')
    p.add_argument('--model', default='mednext_tiny')
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--window', type=window, default=None,
                   help=f"CT window: a preset ({', '.join(CT_WINDOWS)}), 'LEVEL,WIDTH' in HU, or 'file'")
    p.add_argument('--bootstrap', type=int, default=1000, help='bootstrap resamples for the 95%% CIs')
    args = p.parse_args(argv)

    cfg = ClassificationConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        img_size=args.img_size,
        batch_size=args.batch_size,
        in_chans=1,  # grayscale slices, one channel
        window=args.window,
        val_frac=0.25,
        test_frac=0.25,
        n_bootstrap=args.bootstrap,
        progress=False,
        overwrite=True,
    )
    result = fit(cfg)  # also written to OUT/metrics.json
    test = result[result['headline_split']]  # 'test' (or 'val' without a test split)
    print(f"{result['headline_split']} accuracy {test['accuracy']:.3f}, AUC {test['auc']:.3f} "
          f"(n={result['sizes'][result['headline_split']]}); model in {args.out}/export")
    return result


if __name__ == '__main__':
    main()
