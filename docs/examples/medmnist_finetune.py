"""Fine-tune MedNeXt on a MedMNIST file with its official splits, then score the held-out test split.

    python medmnist_finetune.py pneumoniamnist_64 runs/pneumonia --model mednext_tiny --epochs 10 --img-size 64

DATA is a MedMNIST v2 / MedMNIST+ .npz (a path, or a name such as pneumoniamnist_64 found in $MEDMNIST_ROOT or
~/.medmnist; nothing is downloaded). The official train / val / test splits are used as given: the model is fitted
on train, its best checkpoint picked on val, and the test split is scored once, by fit and again by evaluate (which
refuses images the run trained or validated on). Class names come from the built-in table of the MedMNIST subsets;
--labels names them for a file the table does not know.
"""
import argparse

from mednext_zoo.finetune import ClassificationConfig, evaluate, fit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('data', help='MedMNIST .npz file or name (e.g. pneumoniamnist_64)')
    p.add_argument('out', help='run folder to create')
    p.add_argument('--model', default='mednext_tiny')
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--img-size', type=int, default=64, help='MedMNIST images are upsampled to this size')
    p.add_argument('--labels', default=None, help='class names in index order, e.g. "normal,pneumonia"')
    p.add_argument('--bootstrap', type=int, default=1000, help='bootstrap resamples for the 95%% CIs')
    args = p.parse_args(argv)

    fit(ClassificationConfig(model=args.model, data=args.data, out=args.out, epochs=args.epochs, img_size=args.img_size,
                             labels=args.labels, n_bootstrap=args.bootstrap, progress=False))
    report = evaluate(args.out, args.data, n_bootstrap=args.bootstrap, progress=False)  # the official test split
    print(f'test split: ACC {report["accuracy"]:.3f}, AUC {report["auc"]:.3f} (n={report["n"]})')
    return report


if __name__ == '__main__':
    main()
