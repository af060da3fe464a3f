"""Segment thin structures of large 2D images at native resolution: random patches in training, a sliding window
over the whole image in prediction, metrics inside each image's region of interest.

    python native_resolution_seg.py DATA.csv runs/vessels --img-size 224 --epochs 100
    python native_resolution_seg.py --demo vessels/ runs/vessels   # writes the built-in vessel set first

DATA is a CSV with columns image, label (a mask), optional roi (e.g. a fundus field of view) and split, or an
images/ + masks/ (+ rois/) folder. Images with a side larger than --img-size are trained on --img-size patches at
native resolution (finetune's rule; --resize would shrink them whole and lose 1-2 px vessels).
"""
import argparse
import os

from mednext_zoo.finetune.segmentation import SegConfig, fit, predict


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('data', help='dataset CSV or folder (with --demo: the folder to write the vessel set to)')
    p.add_argument('out', help='run folder to create')
    p.add_argument('--demo', action='store_true', help='write the built-in fundus-like vessel set to DATA first')
    p.add_argument('--demo-size', type=int, default=576, help='image side of the demo set')
    p.add_argument('--model', default='medunext_tiny_hr')
    p.add_argument('--img-size', type=int, default=224, help='the model size: the patch side')
    p.add_argument('--epochs', type=int, default=100)
    p.add_argument('--batch-size', type=int, default=12)
    args = p.parse_args(argv)

    data = args.data
    if args.demo:
        from mednext_zoo.data.synthetic_vessels import write_vessel_dataset
        data = write_vessel_dataset(args.data, n_train=8, n_val=2, n_test=4, size=args.demo_size)
    result = fit(SegConfig(data=data, out=args.out, model=args.model, img_size=args.img_size, epochs=args.epochs,
                           batch_size=args.batch_size, progress=False))
    print(f'{result["spatial"]} mode, patch {result["patch_size"]}; strict Dice on the test split: '
          f'{result["summaries"]["strict"]["mean_dice"]:.3f}')
    images = os.path.join(os.path.dirname(data) if data.endswith('.csv') else data, 'images')
    first = sorted(os.listdir(images))[0]
    rows = predict(args.out, [os.path.join(images, first)], out=os.path.join(args.out, 'predictions'), overlays=1)
    print(f'predicted {rows[0]["input"]} -> {rows[0]["prediction"]} (native size)')
    return result


if __name__ == '__main__':
    main()
