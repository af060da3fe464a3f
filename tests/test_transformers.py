"""Hugging Face transformers loads mednext-zoo classifiers (TimmWrapper): folders, fine-tune exports, offline cache.

Skipped without transformers (``pip install "mednext-zoo[transformers]"``). Everything runs offline.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

transformers = pytest.importorskip('transformers')
pytest.importorskip('torchvision')  # TimmWrapperImageProcessor builds timm's torchvision transforms
skdata = pytest.importorskip('skimage.data')

from PIL import Image  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline  # noqa: E402

import mednext_zoo  # noqa: E402,F401  (registers the architectures transformers builds through timm)
from mednext_zoo import hub  # noqa: E402
from mednext_zoo.data.images import build_transforms  # noqa: E402
from mednext_zoo.data.io import load_image  # noqa: E402

SIZE = 64
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures('offline_hf')  # tests/conftest.py


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    n = torch.get_num_threads()  # the CI machine is shared: one intra-op thread is faster under contention
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """mednext_tiny (2 classes: the sarscov2_ct tag's labels) with non-default BN statistics, saved."""
    torch.manual_seed(0)
    model = timm.create_model('mednext_tiny', img_size=SIZE, num_classes=2).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    out = hub.save_pretrained(model, tmp_path_factory.mktemp('saved') / 'tiny', dataset='sarscov2_ct', flops=False)
    return model, out


@pytest.fixture(scope='module')
def retina_png(tmp_path_factory) -> Path:
    """A real, non-square fundus photograph (skimage's retina, 1000 x 1250 crop) as an RGB PNG."""
    path = tmp_path_factory.mktemp('img') / 'retina.png'
    Image.fromarray(skdata.retina()[200:1200, 100:1350]).save(path)
    return path


def ct_slice_png(path: Path) -> Path:
    """pydicom's CT_small.dcm, lung window, rendered to an 8-bit grayscale PNG."""
    pydicom_data = pytest.importorskip('pydicom.data')
    hu = load_image(pydicom_data.get_testdata_file('CT_small.dcm'), window='lung')
    Image.fromarray(np.round(hu * 255).astype(np.uint8)).save(path)
    return path


def _hf_and_timm(source, folder):
    hf = AutoModelForImageClassification.from_pretrained(source).eval()
    tm = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    return hf, tm


def _assert_same_logits(hf, tm, in_chans: int = 3, size: int = SIZE):
    x = torch.randn(3, in_chans, size, size)
    with torch.no_grad():
        a, b = hf(pixel_values=x).logits, tm(x)
    assert a.shape == (3, tm.num_classes)
    # Same weights, same graph; bit-equality is not promised across two module instances on CPU (kernel choice
    # can differ with memory format), so compare at float32 rounding level.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _timm_eval_tensor(model: torch.nn.Module, image: Image.Image) -> torch.Tensor:
    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))(image)


# --- save_pretrained folders -------------------------------------------------------------------------------------


def test_folder_loads_with_equal_logits_and_label_names(saved):
    model, folder = saved
    hf, tm = _hf_and_timm(folder, folder)
    assert type(hf).__name__ == 'TimmWrapperForImageClassification'
    assert hf.config.id2label == {0: 'non_covid', 1: 'covid'} and hf.config.label2id == {'non_covid': 0, 'covid': 1}
    _assert_same_logits(hf, tm)
    _assert_same_logits(hf, model)  # and the saved model's own


def test_pipeline_prints_the_tags_label_names(saved, tmp_path):
    model, folder = saved
    image = Image.open(ct_slice_png(tmp_path / 'ct.png'))
    result = pipeline('image-classification', model=os.fspath(folder))(image)
    assert {r['label'] for r in result} == {'non_covid', 'covid'}  # not LABEL_0 / LABEL_1
    # the pipeline's scores are the softmax of timm's logits on timm's evaluation transform of the same image
    with torch.no_grad():
        probs = model(_timm_eval_tensor(model, image.convert('RGB'))[None]).softmax(-1)[0]
    got = {r['label']: r['score'] for r in result}
    assert got['covid'] == pytest.approx(probs[1].item(), abs=1e-6)


def test_image_processor_is_timms_eval_transform(saved, retina_png):
    model, folder = saved
    image = Image.open(retina_png)
    pixels = AutoImageProcessor.from_pretrained(folder)(image)['pixel_values']
    expect = _timm_eval_tensor(timm.create_model(f'local-dir:{folder}', pretrained=True), image)
    assert pixels.shape == (1, 3, SIZE, SIZE)
    assert (pixels[0] - expect).abs().max().item() <= 1e-5


def test_old_folder_fails_in_transformers_until_fixed(old_style_folder):
    model, folder, _ = old_style_folder
    with pytest.raises(TypeError, match="multiple values for keyword argument 'num_classes'"):
        AutoModelForImageClassification.from_pretrained(folder)
    assert hub.fix_config(folder)
    hf, tm = _hf_and_timm(folder, folder)
    assert hf.config.id2label == {0: 'non_covid', 1: 'covid'}
    _assert_same_logits(hf, tm)
    _assert_same_logits(hf, model)


def test_seeded_offline_cache_loads_by_repo_id(saved, offline_hf, retina_png):
    from huggingface_hub import constants

    model, folder = saved
    repo = 'someone/mednext_tiny-sarscov2'
    hub.seed_hf_cache(folder, repo)
    assert constants.HF_HUB_OFFLINE and os.environ['HF_HUB_OFFLINE'] == '1'
    hf = AutoModelForImageClassification.from_pretrained(repo).eval()
    _assert_same_logits(hf, model)
    result = pipeline('image-classification', model=repo)(Image.open(retina_png))
    assert {r['label'] for r in result} == {'non_covid', 'covid'}
    with pytest.raises(OSError):  # offline and not in the cache: an error, never a download or random weights
        AutoModelForImageClassification.from_pretrained('someone/not-seeded')


def test_one_channel_classifier_loads_but_the_pipeline_feeds_rgb(tmp_path, retina_png):
    model = timm.create_model('mednext_tiny', img_size=SIZE, num_classes=3, in_chans=1).eval()
    out = hub.save_pretrained(model, tmp_path / 'gray', label_names=['normal', 'nodule', 'mass'], flops=False)
    hf, tm = _hf_and_timm(out, out)
    _assert_same_logits(hf, tm, in_chans=1)
    assert '(B, 1, 64, 64) tensors' in (out / 'README.md').read_text()  # the card says how to use it
    with pytest.raises(mednext_zoo.errors.UserInputError, match='1 input channel'):
        pipeline('image-classification', model=os.fspath(out))(Image.open(retina_png))


# --- fine-tune export --------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def finetune_export(tmp_path_factory):
    """A 1-epoch fine-tune on crops of two real images (fundus vs. immunohistochemistry), exported."""
    pytest.importorskip('sklearn')
    from mednext_zoo.finetune import ClassificationConfig, fit

    root = tmp_path_factory.mktemp('ft')
    rng = np.random.default_rng(0)
    for cls, img in (('fundus', skdata.retina()), ('histology', skdata.immunohistochemistry())):
        (root / 'data' / cls).mkdir(parents=True)
        h, w = img.shape[:2]
        for i in range(8):
            c = int(rng.integers(min(h, w) // 4, min(h, w) // 2))
            y, x = int(rng.integers(0, h - c)), int(rng.integers(0, w - c))
            Image.fromarray(img[y:y + c, x:x + c + c // 3]).resize((48, 40)).save(root / 'data' / cls / f'{i}.png')
    cfg = ClassificationConfig(model='mednext_tiny', data=os.fspath(root / 'data'), out=os.fspath(root / 'run'),
                               epochs=1, img_size=32, batch_size=4, lr=1e-3, warmup_epochs=0, n_bootstrap=20,
                               progress=False, device='cpu', val_frac=0.25)
    fit(cfg)
    return cfg, root / 'run' / 'export'


def test_finetune_export_loads_in_transformers(finetune_export, retina_png):
    cfg, export = finetune_export
    assert hub.config_problems(export) == []
    hf, tm = _hf_and_timm(export, export)
    assert hf.config.id2label == {0: 'fundus', 1: 'histology'}
    _assert_same_logits(hf, tm, size=cfg.img_size)
    result = pipeline('image-classification', model=os.fspath(export))(Image.open(retina_png))
    assert {r['label'] for r in result} == {'fundus', 'histology'}


def test_finetune_export_preprocessing(finetune_export, retina_png):
    """transformers = timm's eval transform exactly; both differ from the fine-tune's own evaluation transform
    only by resampling in 8 bits (PIL) instead of float32 (torchvision): the figures docs/weights.md quotes.

    Print them: ``python -m pytest tests/test_transformers.py -k preprocessing -s``.
    """
    cfg, export = finetune_export
    image = Image.open(retina_png)
    processor = AutoImageProcessor.from_pretrained(export)
    pixels = processor(image)['pixel_values'][0]
    timm_eval = _timm_eval_tensor(timm.create_model(f'local-dir:{export}', pretrained=True), image)
    gap = (pixels - timm_eval).abs().max().item()
    assert gap <= 1e-5
    print(f'\nretina 1000x1250, RGB: transformers vs timm eval transform: max {gap:.2g}')
    mean, std = processor.data_config['mean'], processor.data_config['std']
    raw = torch.from_numpy(load_image(retina_png)).permute(2, 0, 1).contiguous()  # what the fine-tune reads
    for size in (cfg.img_size, 224):  # the export's size, and the same settings at the paper's input size
        data_config = dict(processor.data_config, input_size=(3, size, size))
        hf = timm.data.create_transform(**data_config)(image) if size != cfg.img_size else pixels
        diff = (hf - build_transforms(size, mean, std, train=False)(raw)).abs()
        print(f'  {size}x{size}: vs the fine-tune eval transform: max {diff.max().item():.4f}, '
              f'mean {diff.mean().item():.4f} (normalised units)')
        assert diff.max().item() < 0.02 and diff.mean().item() < 0.01  # a centre crop would differ by > 1


# --- segmentation: timm only -------------------------------------------------------------------------------------


def test_segmentation_export_does_not_claim_transformers(tmp_path):
    model = timm.create_model('medunext_tiny', img_size=SIZE, num_classes=4).eval()
    out = hub.save_pretrained(model, tmp_path / 'seg', dataset='acdc', flops=False)
    card = (out / 'README.md').read_text()
    assert 'pipeline_tag: image-segmentation' in card and 'image-classification' not in card
    assert 'Hugging Face transformers: not supported' in card and 'from transformers' not in card
    with pytest.raises(ValueError, match='AutoModelForImageSegmentation'):
        pipeline('image-segmentation', model=os.fspath(out))


# --- docs --------------------------------------------------------------------------------------------------------


def test_docs_from_transformers_section_runs(saved, tmp_path, monkeypatch):
    text = (REPO / 'docs' / 'weights.md').read_text()
    section = text[text.index('## From transformers'):]
    code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
    repo = re.search(r'repo = "([^"]+)"', code).group(1)
    _, folder = saved
    hub.seed_hf_cache(folder, repo)  # the docs' Hub repo id, served from the offline cache
    monkeypatch.chdir(tmp_path)
    ct_slice_png(tmp_path / 'slice.png')
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        exec(compile(code, 'docs/weights.md', 'exec'), scope)
    assert "'label': 'covid'" in stdout.getvalue() and "'label': 'non_covid'" in stdout.getvalue()
    assert scope['logits'].shape == (1, 2)
