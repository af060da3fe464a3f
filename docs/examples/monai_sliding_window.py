"""MedUNeXt inside MONAI's sliding_window_inference: a 3D volume segmented slice by slice with a 2D ROI.

    python monai_sliding_window.py [SIZE]

MedUNeXt is a 2D network built for one input size (``img_size``, sides multiples of 32). The ROI is therefore
``(*model.img_size, 1)``: one whole slice per window after an in-plane resize of the volume to the model's size
(the paper's protocol), and a wrapper drops / restores the depth axis around the model.
"""
import sys

import numpy as np
import timm
import torch
from monai.inferers import SliceInferer, sliding_window_inference
from monai.transforms import Resize, ScaleIntensityRange

import mednext_zoo  # noqa: F401  (registers medunext_* in timm)
from mednext_zoo.data.synthetic import make_phantom
from mednext_zoo.errors import UserInputError


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    size = int(argv[0]) if argv else 224  # the model's input side: a multiple of 32
    model = timm.create_model('medunext_tiny', num_classes=4, in_chans=1, img_size=size).eval()

    image, label, _ = make_phantom(shape=(80, 72, 6))  # X, Y, Z: 6 axial slices of 80 x 72 voxels
    volume = torch.from_numpy(image)[None]  # C, H, W, D
    volume = ScaleIntensityRange(a_min=-200, a_max=300, b_min=0, b_max=1, clip=True)(volume)
    volume = Resize(spatial_size=(*model.img_size, -1), mode='bilinear')(volume)  # in-plane to the model's size
    volume = torch.as_tensor(volume)[None]  # B, C, H, W, D

    def predict_slices(x):  # B, C, H, W, 1 -> logits B, K, H, W, 1
        return model(x[..., 0])[..., None]

    with torch.no_grad():
        logits = sliding_window_inference(volume, roi_size=(*model.img_size, 1), sw_batch_size=4,
                                          predictor=predict_slices)
    print(f'volume {tuple(volume.shape)} -> logits {tuple(logits.shape)} (B, K, H, W, D)')

    # MONAI's 2D-over-3D inferer does the same without a wrapper
    inferer = SliceInferer(roi_size=model.img_size, sw_batch_size=4, spatial_dim=2)
    with torch.no_grad():
        same = inferer(volume, model)
    print(f'SliceInferer: max |difference| {float((same - logits).abs().max()):.1e}')

    # a ROI the model was not built for stops with our UserInputError, naming the size to use
    try:
        with torch.no_grad():
            sliding_window_inference(volume, roi_size=(size - 8, size - 8, 1), sw_batch_size=4,
                                     predictor=predict_slices)
    except UserInputError as e:
        print(f'roi {size - 8}: UserInputError: {e}')
    labels = logits.argmax(1)[0].numpy().astype(np.int16)  # H, W, D at the model's size
    return logits, same, labels


if __name__ == '__main__':
    main()
