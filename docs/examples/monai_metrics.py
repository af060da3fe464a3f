"""Our Dice / HD95 (legacy and strict modes) beside MONAI's compute_dice / compute_hausdorff_distance.

    python monai_metrics.py

One structure (the phantom's kidney, anisotropic 1.5 x 1.5 x 4 mm voxels) against edited predictions: a shift, an
erosion, an island far away, a missed structure, a hallucinated one, and both empty. Prints a Markdown table.
"""
import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

from mednext_zoo.data.synthetic import make_phantom
from mednext_zoo.finetune.segmentation.metrics import binary_metrics

SPACING = (1.5, 1.5, 4.0)  # mm, X, Y, Z


def cases():
    """(name, prediction, ground truth) binary volumes, X, Y, Z."""
    _, label, _ = make_phantom(shape=(64, 64, 16), spacing=SPACING, seed=0)
    gt = label == 2  # kidney
    island = np.zeros_like(gt)
    island[2:6, 2:6, 1:3] = True  # 4 x 4 voxels on 2 slices in a far corner: 7% of the predicted surface
    empty = np.zeros_like(gt)
    return [
        ('shifted 2 voxels (3 mm) in X', np.roll(gt, 2, axis=0), gt),
        ('eroded by 1 voxel', ndimage.binary_erosion(gt), gt),
        ('exact + a far island', gt | island, gt),
        ('missed (empty prediction)', empty, gt),
        ('hallucinated (empty ground truth)', island, empty),
        ('both empty', empty, empty),
    ]


def monai_metrics(pred, gt):
    """MONAI's Dice (``ignore_empty`` True, its default, and False), HD95 and HD (max) in mm of one structure.

    MONAI takes one-hot ``B, C, X, Y, Z`` tensors; channel 0 (background) is left out of the scores.
    """
    def onehot(m):
        m = torch.from_numpy(m)[None, None].float()
        return torch.cat([1 - m, m], dim=1)
    p, g = onehot(pred), onehot(gt)
    with warnings.catch_warnings():  # MONAI warns that an empty mask "may result in nan/inf distance"
        warnings.simplefilter('ignore')
        d = compute_dice(p, g, include_background=False)  # ignore_empty=True: empty ground truth -> NaN
        d_all = compute_dice(p, g, include_background=False, ignore_empty=False)
        h = compute_hausdorff_distance(p, g, include_background=False, percentile=95, spacing=SPACING)
        h_max = compute_hausdorff_distance(p, g, include_background=False, spacing=SPACING)  # percentile None: max
    return float(d[0, 0]), float(d_all[0, 0]), float(h[0, 0]), float(h_max[0, 0])


def main(argv=None):
    rows = ['| case | ours legacy DSC | ours legacy HD95 (voxels) | ours strict DSC | ours strict HD95 (mm) '
            '| MONAI DSC | MONAI DSC, `ignore_empty=False` | MONAI HD95 (mm) | MONAI HD (max, mm) |',
            '|---|---|---|---|---|---|---|---|---|']
    figures = {}
    for name, pred, gt in cases():
        ld, lh = binary_metrics(pred, gt, 'legacy')
        sd, sh = binary_metrics(pred, gt, 'strict', spacing=SPACING)
        md, md_all, mh, mh_max = monai_metrics(pred, gt)
        figures[name] = dict(legacy=(ld, lh), strict=(sd, sh), monai=(md, mh), monai_dice_all=md_all, monai_hd=mh_max)
        rows.append(f'| {name} | ' + ' | '.join(f'{v:.3f}' if np.isfinite(v) else str(v)
                                              for v in (ld, lh, sd, sh, md, md_all, mh, mh_max)) + ' |')
    print('\n'.join(rows))
    return figures


if __name__ == '__main__':
    main()
