"""Train MedUNeXt in a plain MONAI-style loop: MONAI dictionary transforms, Dataset / DataLoader, DiceCELoss.

    python monai_train.py [SIZE] [STEPS]

The data are slices of synthetic CT-like phantoms (``mednext_zoo.data.synthetic``): swap in your own list of
``{"image": ..., "label": ...}`` dictionaries (or MONAI's LoadImaged on file names) for real data.
"""
import itertools
import sys

import timm
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandRotate90d, ResizeWithPadOrCropd, ScaleIntensityRanged
from monai.utils import set_determinism

import mednext_zoo  # noqa: F401  (registers medunext_* in timm)
from mednext_zoo.data.synthetic import PHANTOM_CLASSES, make_phantom


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    size = int(argv[0]) if argv else 224  # the model's input side: a multiple of 32
    steps = int(argv[1]) if len(argv) > 1 else 200
    set_determinism(seed=0)  # seeds torch, numpy and MONAI's random transforms

    slices = []  # one dictionary per axial slice that shows an organ: image and label as C, H, W
    for seed in range(4):
        image, label, _ = make_phantom(shape=(48, 48, 8), seed=seed)
        slices += [{'image': image[None, ..., z], 'label': label[None, ..., z]}
                   for z in range(image.shape[-1]) if label[..., z].any()]
    keys = ['image', 'label']
    transforms = Compose([
        ScaleIntensityRanged('image', a_min=-200, a_max=300, b_min=0.0, b_max=1.0, clip=True),
        ResizeWithPadOrCropd(keys, spatial_size=(size, size)),  # the model's fixed input size
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys, prob=0.5),
        EnsureTyped(keys, track_meta=False),
    ])
    loader = DataLoader(Dataset(slices, transforms), batch_size=4, shuffle=True)

    model = timm.create_model('medunext_tiny', num_classes=len(PHANTOM_CLASSES), in_chans=1, img_size=size)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)  # label B, 1, H, W (class indices); logits B, K, H, W
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for step, batch in zip(range(steps), itertools.cycle(loader)):
        optimizer.zero_grad()
        loss = loss_fn(model(batch['image']), batch['label'])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f'step {step:4d}  DiceCE {loss.item():.3f}')
    return model, losses


if __name__ == '__main__':
    main()
