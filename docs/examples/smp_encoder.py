"""MedNeXt as the encoder of a segmentation_models_pytorch U-Net (a timm-universal ``tu-`` encoder).

    python smp_encoder.py [SIZE]

smp builds ``tu-`` encoders with ``timm.create_model(name, features_only=True, ...)``; MedNeXt's feature maps
(strides 4, 8, 16, 32) plug in directly. MedNeXt's axial mixing fixes the input size, so pass ``img_size=``:
smp hands extra keyword arguments on to timm.
"""
import sys

import segmentation_models_pytorch as smp
import torch

import mednext_zoo  # noqa: F401  (registers mednext_* in timm, where smp's tu- encoders look)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    size = int(argv[0]) if argv else 224
    model = smp.Unet('tu-mednext_tiny', encoder_weights=None, in_channels=1, classes=4, img_size=size)

    x = torch.randn(2, 1, size, size)  # B, C, H, W: two 1-channel slices
    y = torch.randint(0, 4, (2, size, size))  # B, H, W: a label map per slice
    loss_fn = smp.losses.DiceLoss('multiclass')
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()

    model.eval()
    with torch.no_grad():
        logits = model(x)
    print(f'U-Net with a MedNeXt-T encoder: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, '
          f'logits {tuple(logits.shape)}, first loss {loss.item():.3f}')
    return logits


if __name__ == '__main__':
    main()
