"""The segmentation recipe: each builder does what its field says (losses, class weights, sampling, schedules)."""
import math

import pytest
import torch
import torch.nn.functional as F

from mednext_zoo.data import EpochSampler
from mednext_zoo.errors import UserInputError
from mednext_zoo.finetune.recipe import (
    ForegroundSampler,
    TrainingRecipe,
    build_loss,
    build_optimizer,
    build_sampler,
    class_frequencies,
    class_weights,
    recipe_from_config,
    slice_class_presence,
)
from mednext_zoo.finetune.segmentation.losses import DeepSupervisionLoss, DiceCELoss, SoftDiceLoss, downsample_target


def _confident(pred: torch.Tensor, k: int) -> torch.Tensor:
    """Logits whose softmax is (numerically) the one-hot of ``pred`` ``B, H, W``."""
    return F.one_hot(pred, k).permute(0, 3, 1, 2).float() * 50.0


def test_batch_and_image_dice_differ_as_defined():
    # image 0: class 1 on 100 px, predicted exactly; image 1: no class 1, 100 px predicted
    gt = torch.zeros(2, 20, 20, dtype=torch.long)
    gt[0, :10] = 1
    pred = gt.clone()
    pred[1, :10] = 1
    logits = _confident(pred, 2)
    batch = SoftDiceLoss(2, mode='batch', include_background=False)(logits, gt)
    image = SoftDiceLoss(2, mode='image', include_background=False)(logits, gt)
    assert float(batch) == pytest.approx(1 - 200 / 300, abs=1e-4)  # Dice 2 * 100 / (200 + 100)
    assert float(image) == pytest.approx(1 - (1.0 + 0.0) / 2, abs=1e-4)  # per image: 1 and 0
    # with the background in the average, batch mode is the old TransUNet loss exactly
    assert float(SoftDiceLoss(2)(logits, gt)) == pytest.approx(float(DiceCELoss(2, 0.0, 1.0)(logits, gt)))
    with pytest.raises(ValueError, match='Dice mode'):
        SoftDiceLoss(2, mode='volume')


def test_inverse_frequency_class_weights():
    freq = torch.tensor([0.9, 0.09, 0.01, 0.0])
    w = class_weights('inverse', freq)
    assert w.mean().item() == pytest.approx(1.0)
    assert (w[1] / w[0]).item() == pytest.approx(10.0, rel=1e-4) and (w[2] / w[0]).item() == pytest.approx(90, rel=1e-4)
    assert w[3] == w[2]  # a class absent from training gets the rarest present weight
    assert (class_weights('sqrt_inverse', freq)[2] / class_weights('sqrt_inverse', freq)[0]).item() == \
        pytest.approx(math.sqrt(90), rel=1e-4)
    assert class_weights('none', freq) is None
    labels = torch.tensor([[[0, 0, 0, 0], [0, 0, 1, 2]]])  # 8 px: 6 / 1 / 1
    assert class_frequencies([labels, labels], 3).tolist() == pytest.approx([0.75, 0.125, 0.125])
    # the weighted CE makes a mistake on the rare class cost more than the same mistake on the background
    loss_w = build_loss(TrainingRecipe(class_weighting='inverse', dice_weight=0.0), 3, class_frequencies(labels, 3))
    loss_u = build_loss(TrainingRecipe(dice_weight=0.0), 3)
    wrong_rare, wrong_bg = labels.clone(), labels.clone()
    wrong_rare[0, 1, 3] = 0
    wrong_bg[0, 0, 0] = 2
    lw = [float(loss_w(_confident(p, 3) / 25, labels)) for p in (wrong_rare, wrong_bg)]
    lu = [float(loss_u(_confident(p, 3) / 25, labels)) for p in (wrong_rare, wrong_bg)]
    assert lu[0] == pytest.approx(lu[1], rel=1e-4) and lw[0] > 2 * lw[1]
    with pytest.raises(UserInputError, match='frequencies'):
        build_loss(TrainingRecipe(class_weighting='inverse'), 3)


def test_foreground_oversampling_frequency_and_resume():
    n = 200
    presence = torch.zeros(n, 3, dtype=torch.bool)
    presence[:, 0] = True
    presence[:100, 1] = True  # class 1: half the slices
    presence[100:110, 2] = True  # class 2: 5 % of the slices
    holds2 = lambda idx: presence[torch.tensor(idx), 2].float().mean().item()  # noqa: E731
    draws = []
    s = build_sampler(TrainingRecipe(oversample_fg=0.5), presence, seed=3)
    assert isinstance(s, ForegroundSampler)
    for epoch in range(20):
        s.set_epoch(epoch)
        draws += [i for i, _ in s]
    # forced draws (p = 0.5) pick class 2 half the time; the free draws hold it 5 % of the time
    assert holds2(draws) == pytest.approx(0.5 * 0.05 + 0.5 * 0.5, abs=0.03)
    # resuming mid-epoch yields exactly the rest of that epoch
    s.set_epoch(7)
    full = list(s)
    s.set_epoch(7, start=50)
    assert list(s) == full[50:] and all(e == 7 for _, e in full)
    # no oversampling: the plain EpochSampler, same order
    plain = build_sampler(TrainingRecipe(oversample_fg=0.0), presence, seed=3)
    assert type(plain) is EpochSampler
    plain.set_epoch(2)
    ref = EpochSampler(n, 3, True)
    ref.set_epoch(2)
    assert list(plain) == list(ref)
    assert holds2([i for i, _ in plain]) == pytest.approx(0.05)
    # ranks draw disjoint shuffles of the same size
    r0, r1 = (ForegroundSampler(presence, 0.33, 3, rank=r, world_size=2) for r in (0, 1))
    assert len(list(r0)) == len(list(r1)) == n // 2


def test_slice_class_presence():
    lab = torch.zeros(3, 4, 4, dtype=torch.long)
    lab[1, 0, 0] = 2
    lab[2] = 1
    p = slice_class_presence([lab[:2], lab[2:]], 3)
    assert p.tolist() == [[True, False, False], [True, False, True], [False, True, False]]


def test_deep_supervision_targets_and_weights():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 16, 16))
    outs = [torch.randn(2, 3, 16 // 2 ** i, 16 // 2 ** i) for i in range(3)]
    base = DiceCELoss(3)
    ds = DeepSupervisionLoss(base)
    # nearest downsampling keeps the labels at the even pixels
    assert torch.equal(downsample_target(target, (8, 8)), target[:, ::2, ::2])
    assert torch.equal(downsample_target(target, (4, 4)), target[:, ::4, ::4])
    want = (4 * base(outs[0], target) + 2 * base(outs[1], target[:, ::2, ::2]) + base(outs[2], target[:, ::4, ::4])) / 7
    assert float(ds(outs, target)) == pytest.approx(float(want), rel=1e-5)
    assert float(ds(tuple(outs), target)) == pytest.approx(float(want), rel=1e-5)
    assert float(ds(outs[0], target)) == pytest.approx(float(base(outs[0], target)))  # a plain tensor: as today
    off = DeepSupervisionLoss(base, enabled=False)
    assert float(off(outs, target)) == pytest.approx(float(base(outs[0], target)))
    assert float(build_loss(TrainingRecipe(), 3)(outs, target)) == pytest.approx(float(want), rel=1e-5)


def _lrs(recipe, total):
    model = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(model, recipe, total)
    out = []
    for step in range(total + 1):
        sched.step_update(num_updates=step)
        out.append(opt.param_groups[0]['lr'])
    return opt, out


def test_schedules_and_warmup():
    opt, cos = _lrs(TrainingRecipe(lr=1e-2, min_lr=1e-4), 100)
    assert type(opt).__name__ == 'Adam' and cos[0] == pytest.approx(1e-2) and cos[-1] == pytest.approx(1e-4)
    assert cos[50] == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5, rel=1e-3)
    _, const = _lrs(TrainingRecipe(lr=1e-2, schedule='constant'), 100)
    assert all(v == pytest.approx(1e-2) for v in const)
    _, poly = _lrs(TrainingRecipe(lr=1e-2, min_lr=0.0, schedule='poly'), 100)
    assert poly[50] == pytest.approx(1e-2 * 0.5 ** 0.9, rel=1e-3)
    _, warm = _lrs(TrainingRecipe(lr=1e-2, warmup_frac=0.1, schedule='constant'), 100)
    assert warm[0] == pytest.approx(1e-5) and warm[5] < warm[9] < 1e-2 and warm[10] == pytest.approx(1e-2)
    opt, _ = _lrs(TrainingRecipe(opt='sgd'), 3)
    assert type(opt).__name__ == 'SGD'
    with pytest.raises(UserInputError, match='--opt'):
        _lrs(TrainingRecipe(opt='nope'), 3)


def test_recipe_checks_and_config_mapping():
    for bad in (dict(schedule='step'), dict(dice_mode='volume'), dict(oversample_fg=1.5),
                dict(class_weighting='median'), dict(ce_weight=0.0, dice_weight=0.0), dict(clip_grad=0.0)):
        with pytest.raises(UserInputError):
            TrainingRecipe(**bad)
    with pytest.raises(UserInputError, match='Unknown recipe field'):
        TrainingRecipe().replace(oversample=0.3)
    assert TrainingRecipe().replace(oversample_fg=0.33).oversample_fg == 0.33
    from mednext_zoo.finetune.segmentation.task import SegConfig
    cfg = SegConfig(data='d', out='o', lr=3e-3, oversample_fg=0.33, dice_mode='image', warmup_epochs=2.0)
    r = recipe_from_config(cfg, updates_per_epoch=10)
    assert (r.lr, r.oversample_fg, r.dice_mode, r.warmup_steps) == (3e-3, 0.33, 'image', 20)
    assert recipe_from_config(SegConfig(data='d', out='o')) == TrainingRecipe()  # same defaults


def test_finetune_cli_takes_the_recipe_options(tmp_path):
    from mednext_zoo.cli import main
    from mednext_zoo.data.synthetic import write_phantom_dataset
    data = write_phantom_dataset(str(tmp_path / 'data'), n_cases=3, shape=(24, 24, 3))
    run = str(tmp_path / 'run')
    rc = main(['finetune', '--task', 'seg', '--model', 'medunext_tiny', '--data', data, '--out', run,
               '--img-size', '32', '--epochs', '1', '--batch-size', '2', '--no-progress', '--eval-split', 'none',
               '--no-export', '--oversample-fg', '0.5', '--dice-mode', 'image', '--no-dice-background',
               '--class-weighting', 'inverse', '--schedule', 'poly', '--ce-weight', '0.3'])
    assert rc == 0
    import json
    cfg = json.load(open(tmp_path / 'run' / 'config.json'))
    assert (cfg['oversample_fg'], cfg['dice_mode'], cfg['dice_background'], cfg['class_weighting'],
            cfg['schedule'], cfg['ce_weight'], cfg['deep_supervision']) == (0.5, 'image', False, 'inverse', 'poly',
                                                                             0.3, True)
    # options shared with --task cls and not given take the seg recipe's values (cls resolves lr by the start)
    assert (cfg['lr'], cfg['clip_grad'], cfg['weight_decay']) == (TrainingRecipe.lr, None, TrainingRecipe.weight_decay)
    assert main(['finetune', '--task', 'seg', '--model', 'medunext_tiny', '--data', data, '--out', run + '2',
                 '--oversample-fg', '2', '--no-progress']) == 2


def test_replace_takes_a_command_line_none_for_a_text_field():
    # `--recipe class_weighting=none` parses 'none' to None; the field spells it 'none'
    assert TrainingRecipe().replace(class_weighting=None).class_weighting == 'none'
