"""Native-resolution 2D segmentation: the spatial rule, patches, tiles, sliding-window prediction, regions of
interest, the vessel set, and finetune / the training suite in patch mode (issue 21)."""
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from mednext_zoo.data.synthetic_vessels import make_vessel_image, write_vessel_dataset
from mednext_zoo.data.volumes import Volume, discover, load_volume
from mednext_zoo.errors import UserInputError
from mednext_zoo.finetune.segmentation.data import (
    PatchDataset,
    Prepared,
    TileDataset,
    choose_spatial_mode,
    crop_patch,
)
from mednext_zoo.finetune.segmentation.inference import predict_volume, sliding_window_probs
from mednext_zoo.finetune.segmentation.metrics import evaluate_case


def test_the_spatial_rule():
    assert choose_spatial_mode([(576, 560)], 224, is_2d=True) == ('patch', 224)
    assert choose_spatial_mode([(200, 224)], 224, is_2d=True) == ('resize', 224)  # not larger: resized as before
    assert choose_spatial_mode([(512, 512)], 224, is_2d=False) == ('resize', 224)  # volumes: resized by default
    assert choose_spatial_mode([(512, 512)], 224, is_2d=False, patch_size=128) == ('patch', 128)
    assert choose_spatial_mode([(576, 576)], 224, is_2d=True, resize=True) == ('resize', 224)
    with pytest.raises(UserInputError, match='multiple of 32'):
        choose_spatial_mode([(64, 64)], 64, True, patch_size=48)
    with pytest.raises(UserInputError, match='one of them'):
        choose_spatial_mode([(64, 64)], 64, True, patch_size=64, resize=True)


def test_foreground_patches_hold_foreground_and_small_images_are_padded():
    img = torch.rand(1, 100, 90)
    lab = torch.zeros(100, 90, dtype=torch.long)
    lab[70, 10] = 2  # one pixel of a rare class
    lab[5:9, 80:84] = 1
    rng = random.Random(0)
    for _ in range(20):
        x, y = crop_patch(img, lab, 32, rng, fg_p=1.0, num_classes=3)
        assert x.shape == (1, 32, 32) and y.shape == (32, 32) and (y > 0).any()
    hits = sum(int((crop_patch(img, lab, 32, rng, fg_p=1.0, num_classes=3)[1] == 2).any()) for _ in range(40))
    assert 10 < hits < 35  # the class is drawn uniformly among those present, not by pixel count
    x, y = crop_patch(img[:, :20, :25], lab[:20, :25], 32, rng)
    assert x.shape == (1, 32, 32) and float(x[:, 20:].abs().sum()) == 0 and int(y[:, 25:].sum()) == 0


def test_patch_dataset_is_seeded_by_seed_epoch_and_index_and_tiles_cover_the_image():
    vol = Prepared(torch.rand(2, 1, 70, 100), (torch.rand(2, 70, 100) > 0.9).long())
    ds = PatchDataset([vol], 32, 2, augment=True, seed=3, fg_p=0.5)
    assert len(ds) == 2 * 7  # each slice ceil(70 * 100 / 32**2) times an epoch: as many pixels as it holds
    assert ds.class_presence(2).shape == (14, 2)
    a, b = ds[(1, 4)], ds[(1, 4)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(ds[(1, 5)][0], a[0])
    tiles = TileDataset([vol], 32)
    assert len(tiles) == 2 * 3 * 4  # ceil(70 / 32) x ceil(100 / 32) tiles per slice
    covered = torch.zeros(70, 100)
    for i in range(12):
        _, _, y0, x0 = tiles.index[i]
        x, y = tiles[i]
        assert x.shape == (1, 32, 32)
        covered[y0:y0 + 32, x0:x0 + 32] += 1
    assert (covered == 1).all()
    assert len(TileDataset([vol], 32, max_tiles=5)) == 5


class _Pointwise(nn.Module):
    """A per-pixel model: its output at a pixel depends on that pixel only, so any windowing must give the same."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)

    def forward(self, x):
        assert x.shape[-2:] == (32, 32)  # the model only ever sees the window size
        return self.conv(x)


def test_sliding_window_equals_the_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    m = _Pointwise().eval()
    x = torch.rand(2, 1, 75, 50)
    probs = sliding_window_probs(m, x, 32, overlap=0.5, batch_size=4)
    assert probs.shape == (2, 3, 75, 50)
    torch.testing.assert_close(probs, m.conv(x).softmax(1), atol=1e-5, rtol=1e-5)
    vol = Volume('c', np.random.rand(3, 75, 50).astype(np.float32), None, np.eye(4), (1, 1, 1))
    pred = predict_volume(m, vol, 32, patch_size=32)
    assert pred.shape == (3, 75, 50)
    want = m.conv(torch.from_numpy(vol.image)[:, None]).argmax(1).numpy()
    assert (pred == want).mean() > 0.999


def test_metrics_count_only_pixels_inside_the_roi():
    gt = np.zeros((1, 20, 20), np.int16)
    gt[0, 5:10, 5:10] = 1
    pred = gt.copy()
    pred[0, 15:20, 15:20] = 1  # a false positive outside the field of view
    roi = np.zeros_like(gt, dtype=bool)
    roi[0, :12, :12] = True
    assert evaluate_case(pred, gt, ['bg', 'fg'], roi=roi)['legacy'].dice[0] == pytest.approx(1.0)
    assert evaluate_case(pred, gt, ['bg', 'fg'])['legacy'].dice[0] < 0.7
    with pytest.raises(UserInputError, match='region-of-interest shape'):
        evaluate_case(pred, gt, ['bg', 'fg'], roi=roi[:, :10])


def test_vessel_images_are_thin_deterministic_and_inside_the_fov():
    a, b = make_vessel_image(3, seed=1, size=192), make_vessel_image(3, seed=1, size=192)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.image.shape == (192, 192, 3) and a.image.dtype == np.uint8
    assert not a.mask[~a.fov].any() and 0.01 < a.mask.mean() < 0.2
    from scipy import ndimage
    depth = ndimage.distance_transform_edt(a.mask)[a.mask > 0]
    assert np.median(depth) <= 1.5  # mostly 1-3 px wide


@pytest.fixture(scope='module')
def vessels(tmp_path_factory):
    root = tmp_path_factory.mktemp('vessels')
    return write_vessel_dataset(str(root), n_train=3, n_val=1, n_test=2, size=96)


def test_rois_are_read_from_a_csv_column_and_a_rois_folder(vessels, tmp_path):
    import os
    import shutil
    ds = discover(vessels)
    assert all(r.roi for r in ds.records)
    vol = load_volume(ds.records[0])
    assert vol.roi.shape == vol.label.shape and vol.roi.dtype == bool and 0.5 < vol.roi.mean() < 0.9
    root = os.path.dirname(vessels)
    folder = tmp_path / 'f'
    for sub in ('images', 'masks', 'rois'):
        shutil.copytree(os.path.join(root, sub), folder / sub)
    assert all(r.roi for r in discover(str(folder)).records)
    os.remove(folder / 'rois' / 'vessels_000.png')
    with pytest.raises(UserInputError, match='no region of interest'):
        discover(str(folder))


@pytest.mark.slow
def test_finetune_seg_patches_large_images_and_scores_them_at_native_resolution(vessels, tmp_path):
    from mednext_zoo.finetune.segmentation import SegConfig, fit, predict
    res = fit(SegConfig(data=vessels, out=str(tmp_path / 'run'), model='medunext_tiny_hr', img_size=64, epochs=1,
                        batch_size=4, progress=False))
    cfg = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert cfg['patch_size'] == 64 and cfg['img_size'] == 64 and res['spatial'] == 'patch'
    seg = json.loads((tmp_path / 'run' / 'export' / 'segmentation.json').read_text())
    assert seg['patch_size'] == 64 and seg['sw_overlap'] == 0.5
    assert res['summaries']['legacy']['n_cases'] == 2
    rows = predict(str(tmp_path / 'run'), [vessels.replace('dataset.csv', 'images/vessels_005.png')],
                   out=str(tmp_path / 'pred'), overlays=0)
    from PIL import Image
    assert np.array(Image.open(rows[0]['prediction'])).shape == (96, 96)  # native size
    resized = fit(SegConfig(data=vessels, out=str(tmp_path / 'run2'), model='medunext_tiny_hr', img_size=64,
                            epochs=1, batch_size=4, progress=False, resize=True, export=False))
    assert resized['spatial'] == 'resize'


def test_training_suite_patches_user_images(vessels):
    from mednext_zoo.benchmark.training import TrainRow, TrainSuiteConfig, _user_seg_data, train_one
    from mednext_zoo.finetune.recipe import TrainingRecipe
    data = _user_seg_data(vessels, 64)
    assert data.patch == 64 and data.in_chans == 3 and len(data.test_vols) == 2
    assert data.summary()['spatial'].startswith('patches 64x64')
    cfg = TrainSuiteConfig(steps=2, batch_size=2, eval_every=2)
    run = train_one(TrainRow.of('medunext_tiny_hr'), data, 0, cfg, TrainingRecipe(), torch.device('cpu'))
    assert run['status'] == 'ok' and 0 <= run['final']['dice']['foreground'] <= 1
    resized = _user_seg_data(vessels, 64, resize=True)
    assert resized.patch is None and resized.test_x.shape[-2:] == (64, 64)
    assert [tuple(t.shape) for t in resized.test_native] == [(1, 96, 96)] * 2  # scored at native resolution
    run = train_one(TrainRow.of('medunext_tiny_hr'), resized, 0, cfg, TrainingRecipe(), torch.device('cpu'))
    assert run['status'] == 'ok' and 0 <= run['final']['dice']['foreground'] <= 1
