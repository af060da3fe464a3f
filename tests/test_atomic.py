"""Files written atomically get the mode a plain ``open`` would give them (issue 12, item 5)."""
import os
import stat
import threading

import pytest

from mednext_zoo._atomic import atomic_path, atomic_write_bytes, atomic_write_text

pytestmark = pytest.mark.skipif(os.name != 'posix', reason='POSIX file modes')


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    state = {}

    def set_umask(value):
        state.setdefault('old', os.umask(value))
    yield set_umask
    if 'old' in state:
        os.umask(state['old'])


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize('mask, expected', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)])
def test_new_file_mode_follows_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_bytes(tmp_path / 'a.bin', b'x')
    atomic_write_text(tmp_path / 'sub' / 'b.txt', 'y')
    with atomic_path(tmp_path / 'c.nii.gz') as tmp:
        tmp.write_bytes(b'z')
    plain = tmp_path / 'plain.txt'
    plain.write_text('w')  # what open() gives: the reference
    assert _mode(plain) == expected
    for name in ('a.bin', 'sub/b.txt', 'c.nii.gz'):
        assert _mode(tmp_path / name) == expected, name


def test_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / 'results.json'
    target.write_text('old')
    os.chmod(target, 0o640)
    atomic_write_text(target, 'new')
    assert target.read_text() == 'new' and _mode(target) == 0o640
    os.chmod(target, 0o604)
    atomic_write_text(target, 'newer')
    assert _mode(target) == 0o604


def test_writer_that_recreates_the_temp_file_still_gets_the_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / 'w.bin'
    with atomic_path(target) as tmp:
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # a writer making its own private file
        os.write(fd, b'data')
        os.close(fd)
    assert _mode(target) == 0o644


def test_failed_write_leaves_no_temp_and_keeps_the_old_file(tmp_path):
    target = tmp_path / 'keep.txt'
    target.write_text('old')
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('half')
        raise RuntimeError('writer died')
    assert target.read_text() == 'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.txt']


def test_concurrent_writers_do_not_collide(tmp_path):
    errors = []

    def work(i):
        try:
            for j in range(20):
                atomic_write_text(tmp_path / f'f{i % 2}.txt', f'{i}-{j}')
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ['f0.txt', 'f1.txt']


@pytest.mark.parametrize('mask, expected', [(0o022, 0o644), (0o077, 0o600)])
def test_save_pretrained_export_mode(tmp_path, umask, mask, expected):
    import timm

    import mednext_zoo  # noqa: F401 - registers the models
    from mednext_zoo.hub import save_pretrained

    umask(mask)
    model = timm.create_model('mednext_tiny', num_classes=2, in_chans=1, img_size=64)
    out = save_pretrained(model, tmp_path / 'export', flops=False)
    for name in ('config.json', 'model.safetensors', 'README.md'):
        assert _mode(out / name) == expected, name


def test_bench_results_mode(tmp_path, umask):
    from mednext_zoo.benchmark.report import load_results, write_results

    umask(0o022)
    src = os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'results', 'seg-cpu-amd-epyc-2core')
    written = write_results(load_results(src), tmp_path / 'bench', plot=False)
    for p in written.values():
        assert _mode(p) == 0o644, p
