"""A core install (no extras) imports the package, creates models and builds the whole CLI parser.

The release check in ``.ci/run`` installs the wheel without extras and runs ``mednext-zoo models``; this test
catches a module-level import of an optional dependency earlier, by blocking the optional packages in a fresh
interpreter.
"""
import subprocess
import sys
import textwrap

OPTIONAL = ('scipy', 'nibabel', 'pydicom', 'torchmetrics', 'sklearn', 'segmentation_models_pytorch', 'monai', 'onnx',
            'onnxruntime', 'openvino', 'nncf', 'psutil', 'transformers', 'h5py', 'SimpleITK', 'skimage', 'medpy')

SCRIPT = textwrap.dedent('''
    import importlib.abc, sys
    import timm, torch, torch._dynamo  # torch probes optional modules while it imports; block only after
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split('.')[0] in {blocked!r}:
                raise ModuleNotFoundError(f'No module named {{name!r}} (blocked: not a core dependency)')
    sys.meta_path.insert(0, Block())
    import mednext_zoo
    from mednext_zoo.cli import build_parser, main
    m = timm.create_model('medunext_tiny_hr', in_chans=1, num_classes=3, img_size=64).eval()
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 3, 64, 64)
    parser = build_parser()
    subs = [a for a in parser._actions if a.__class__.__name__ == '_SubParsersAction'][0].choices
    for name in subs:
        try:
            main([name, '--help'])
        except SystemExit as e:
            assert e.code == 0, (name, e.code)
    assert main(['models']) == 0
    print('core ok', sorted(subs))
''').format(blocked=set(OPTIONAL))


def test_core_install_builds_the_cli_without_optional_packages():
    res = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'core ok' in res.stdout
