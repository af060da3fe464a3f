"""Every command and self-contained Python block in README.md and docs/*.md works as written (issue 12, item 11).

Blocks are discovered at collection time, so pages added later are covered without touching this file.

* ```bash blocks: every line is checked by what it runs. ``mednext-zoo ...`` (also ``python -m mednext_zoo.cli``
  and ``torchrun ... -m mednext_zoo.cli``) is parsed by the real argparse parser, which catches a missing
  required argument or a misspelt flag; ``mednext-zoo list`` / ``models`` are run for real. ``python SCRIPT``
  runs the script up to its argument parsing (the work itself is stopped there). ``python -c CODE`` runs.
  ``pip install`` may only name extras that pyproject.toml defines, and may not install ``mednext-zoo`` from an
  index before the first release. ``python -m pytest`` is this very suite and is not re-run.
* Inline spans in prose such as `mednext-zoo list` or `pip install "mednext-zoo[bench]"` get the same checks
  (a bare subcommand only has to exist; a span with ``...`` only has to use flags the subcommand has).
* ```python blocks are executed in a scratch folder. A block that needs data, a run folder or the network is
  marked in the page with ``<!-- no-test: why -->`` on the line before it; a slow one with ``<!-- test: slow -->``.
"""
from __future__ import annotations

import argparse
import io
import re
import runpy
import shlex
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]
CLI_MODULE = 'mednext_zoo.cli'
CHEAP_SUBCOMMANDS = {'list', 'models'}  # run for real: no data, no network, a second or two

_FENCE = re.compile(r'^(?P<fence>```|~~~)(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$', re.S | re.M)
_MARKER = re.compile(r'<!--\s*(no-test|test:\s*slow)\b[^>]*-->\s*$')
_INLINE = re.compile(r'(?<!`)`(?P<cmd>(?:mednext-zoo |pip install |python -m mednext_zoo\.cli|python benchmarks/)'
                     r'[^`\n]*)`(?!`)')  # `mednext-zoo` alone is the Hub organisation, not a command


@dataclass
class Snippet:
    page: Path
    line: int
    kind: str  # 'bash' | 'python' | 'inline'
    text: str
    marker: Optional[str] = None  # 'no-test' | 'slow'

    @property
    def where(self) -> str:
        return f'{self.page.relative_to(ROOT)}:{self.line}'


def _strip_fences(text: str) -> str:
    """The page with fenced blocks blanked out (line numbers kept), for the inline-span scan."""
    return _FENCE.sub(lambda m: '\n' * m.group(0).count('\n'), text)


def discover() -> List[Snippet]:
    out = []
    for page in PAGES:
        text = page.read_text(encoding='utf-8')
        for m in _FENCE.finditer(text):
            lang = m.group('lang').lower()
            if lang not in ('bash', 'sh', 'shell', 'console', 'python', 'py'):
                continue
            line = text.count('\n', 0, m.start()) + 1
            before = [ln for ln in text[:m.start()].splitlines() if ln.strip()]
            marker = None
            if before:
                mk = _MARKER.search(before[-1])
                if mk:
                    marker = 'no-test' if mk.group(1) == 'no-test' else 'slow'
            kind = 'python' if lang in ('python', 'py') else 'bash'
            out.append(Snippet(page, line, kind, m.group('body'), marker))
        prose = _strip_fences(text)
        for m in _INLINE.finditer(prose):
            out.append(Snippet(page, prose.count('\n', 0, m.start()) + 1, 'inline', m.group('cmd')))
    return out


_DOCSTRING_CMD = re.compile(r'^\s*(?:mednext-zoo |python benchmarks/|python -m mednext_zoo\.cli |torchrun )')


def discover_docstrings() -> List[Snippet]:
    """Example command lines in the docstrings of the CLI modules and the benchmark scripts (usage synopses
    with ``[...]`` or ``|`` are not commands and are left out)."""
    out = []
    for path in sorted([*(ROOT / 'mednext_zoo' / 'cli').glob('*.py'), *(ROOT / 'benchmarks').rglob('*.py')]):
        for i, line in enumerate(path.read_text(encoding='utf-8').splitlines(), start=1):
            if _DOCSTRING_CMD.match(line) and not re.search(r'\[|\||\.\.\.|<|>', line.split('#')[0]):
                out.append(Snippet(path, i, 'bash', line.strip()))
    return out


SNIPPETS = discover() + discover_docstrings()


def _commands(block: str) -> List[List[str]]:
    """The command lines of a shell block as argv lists (continuations joined, comments dropped)."""
    joined = re.sub(r'\\\n', ' ', block)
    cmds = []
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        argv = shlex.split(line, comments=True)
        while argv and re.match(r'^[A-Za-z_][A-Za-z0-9_]*=', argv[0]):  # VAR=value prefixes
            argv = argv[1:]
        if argv:
            cmds.append(argv)
    return cmds


# ---------------------------------------------------------------- checks per command
def _parser() -> argparse.ArgumentParser:
    from mednext_zoo.cli import build_parser
    return build_parser()


def _parse_cli(args: List[str], where: str) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            return _parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f'{where}: `mednext-zoo {" ".join(args)}` does not parse (exit {e.code}):\n{err.getvalue()}')


def _subparser(name: str) -> Optional[argparse.ArgumentParser]:
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _check_cli(args: List[str], where: str, inline: bool = False) -> None:
    if not args:
        pytest.fail(f'{where}: `mednext-zoo` without a subcommand')
    sub = _subparser(args[0])
    assert sub is not None, f'{where}: `mednext-zoo {args[0]}` is not a subcommand'
    if inline and (len(args) == 1 or '...' in args):
        # prose that names a subcommand, or elides arguments: only the flags it shows must exist
        known = {s for a in sub._actions for s in a.option_strings}
        for tok in args[1:]:
            flag = tok.split('=', 1)[0]
            if flag.startswith('--'):
                assert flag in known, f'{where}: `mednext-zoo {args[0]}` has no option {flag}'
        return
    assert '...' not in args, f'{where}: a command with "..." cannot be run as written; spell it out'
    _parse_cli(args, where)
    if args[0] in CHEAP_SUBCOMMANDS:
        from mednext_zoo.cli import main
        out = io.StringIO()
        with redirect_stdout(out):
            rc = main(args)
        assert rc == 0 and out.getvalue().strip(), f'{where}: `mednext-zoo {" ".join(args)}` failed (rc {rc})'


def _extras() -> set:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip('tomli')
    with open(ROOT / 'pyproject.toml', 'rb') as f:
        return set(tomllib.load(f)['project']['optional-dependencies'])


def _released() -> bool:
    """A version section other than [Unreleased] in the changelog means a release exists."""
    text = (ROOT / 'CHANGELOG.md').read_text(encoding='utf-8')
    return bool(re.search(r'^## \[\d+\.\d+[^\]]*\]', text, re.M))


def _check_pip(args: List[str], where: str) -> None:
    assert args[:1] == ['install'], f'{where}: only `pip install` is expected in the docs, got {args}'
    extras = _extras()
    takes_value = {'--index-url', '-i', '--extra-index-url', '-r', '--requirement', '-c', '--constraint'}
    skip = False
    for tok in args[1:]:
        if skip:
            skip = False
            continue
        if tok in takes_value:
            skip = True
            continue
        if tok.startswith('-'):
            continue
        m = re.match(r'^(?P<name>[A-Za-z0-9_.\-]+|\.)(?:\[(?P<extras>[^\]]*)\])?$', tok)
        assert m, f'{where}: cannot read the requirement {tok!r}'
        name = m.group('name')
        ours = name in ('.', 'mednext-zoo', 'mednext_zoo')
        if ours and m.group('extras'):
            for e in m.group('extras').split(','):
                assert e.strip() in extras, f'{where}: extra [{e.strip()}] is not in pyproject.toml ({sorted(extras)})'
        if name in ('mednext-zoo', 'mednext_zoo'):
            assert _released(), (f'{where}: `pip install {tok}` installs from PyPI, but no release exists yet '
                                 f'(CHANGELOG.md has only [Unreleased]); install from a checkout: pip install -e .')


class _Parsed(Exception):
    """Raised instead of running a script's work once its arguments have parsed."""


def _check_script(script: str, args: List[str], where: str) -> None:
    path = ROOT / script
    assert path.is_file(), f'{where}: {script} does not exist'
    source = path.read_text(encoding='utf-8')
    assert 'argparse' in source or 'mednext_zoo.cli import main' in source, \
        f'{where}: {script} parses no arguments, so the docs test cannot stop it before it runs'
    original = argparse.ArgumentParser.parse_args
    err = io.StringIO()

    def parse_then_stop(self, a=None, namespace=None):
        original(self, a, namespace)
        raise _Parsed

    argv, path0 = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            argparse.ArgumentParser.parse_args = parse_then_stop
            runpy.run_path(str(path), run_name='__main__')
    except _Parsed:
        return
    except SystemExit as e:
        pytest.fail(f'{where}: `python {script} {" ".join(args)}` does not parse (exit {e.code}):\n{err.getvalue()}')
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv, sys.path[:] = argv, path0
    pytest.fail(f'{where}: {script} finished without parsing arguments')


def _exec_python(code: str, where: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            exec(compile(code, where, 'exec'), {'__name__': '__docs__'})
    except Exception as e:
        pytest.fail(f'{where}: the Python block fails: {type(e).__name__}: {e}')


def _check_command(argv: List[str], where: str, tmp_path: Path, monkeypatch, inline: bool = False) -> None:
    prog, args = argv[0], argv[1:]
    if prog == 'mednext-zoo':
        return _check_cli(args, where, inline)
    if prog == 'torchrun':
        assert '-m' in args and args[args.index('-m') + 1] == CLI_MODULE, f'{where}: torchrun of what? {argv}'
        return _check_cli(args[args.index('-m') + 2:], where)
    if prog == 'pip':
        return _check_pip(args, where)
    if prog in ('python', 'python3'):
        if args[:2] == ['-m', CLI_MODULE]:
            return _check_cli(args[2:], where, inline)
        if args[:2] == ['-m', 'pip']:
            return _check_pip(args[2:], where)
        if args[:2] == ['-m', 'pytest']:
            assert (ROOT / 'tests').is_dir()
            return None  # this suite itself
        if args[:1] == ['-c']:
            return _exec_python(args[1], where, tmp_path, monkeypatch)
        if args and args[0].endswith('.py'):
            return _check_script(args[0], args[1:], where)
    if prog == 'bash' and args and args[0].endswith('.sh'):
        prog, args = args[0], args[1:]
    if prog.endswith('.sh'):
        return _check_shell_script(prog, args, where)
    pytest.fail(f'{where}: tests/test_docs.py does not know how to check `{" ".join(argv)}`; teach it')


def _check_shell_script(script: str, args: List[str], where: str) -> None:
    """A repository shell script: its syntax is checked, and with ``--dry-run`` it is run (it prints a plan)."""
    import shutil
    import subprocess
    path = ROOT / script
    assert path.is_file(), f'{where}: {script} does not exist'
    if shutil.which('bash') is None:
        pytest.skip('no bash here')
    res = subprocess.run(['bash', '-n', str(path)], capture_output=True, text=True)
    assert res.returncode == 0, f'{where}: {script} has a syntax error:\n{res.stderr}'
    if '--dry-run' in args:
        env = {**__import__('os').environ, 'PYTHON': sys.executable}
        res = subprocess.run(['bash', str(path), *args], capture_output=True, text=True, env=env, timeout=60)
        assert res.returncode == 0, f'{where}: `{script} {" ".join(args)}` failed (rc {res.returncode}):\n{res.stderr}'


# ---------------------------------------------------------------- tests
def _id(s: Snippet) -> str:
    return f'{s.where}-{s.kind}'


@pytest.mark.parametrize('snippet', [s for s in SNIPPETS if s.kind in ('bash', 'inline')], ids=_id)
def test_shell_commands(snippet, tmp_path, monkeypatch):
    if snippet.marker == 'no-test':
        pytest.skip(f'{snippet.where}: marked no-test')
    if snippet.kind == 'inline':
        cmds = [shlex.split(snippet.text)]
    else:
        cmds = _commands(snippet.text)
    for argv in cmds:
        _check_command(argv, snippet.where, tmp_path, monkeypatch, inline=snippet.kind == 'inline')


def _python_params():
    params = []
    for s in SNIPPETS:
        if s.kind != 'python':
            continue
        marks = [pytest.mark.slow] if s.marker == 'slow' else []
        params.append(pytest.param(s, marks=marks, id=_id(s)))
    return params


@pytest.mark.parametrize('snippet', _python_params())
def test_python_blocks(snippet, tmp_path, monkeypatch):
    if snippet.marker == 'no-test':
        pytest.skip(f'{snippet.where}: marked no-test (needs data, a run folder or the network)')
    included = _included_files(snippet.text)
    if included:  # a pymdownx.snippets include of a script that tests/test_examples.py runs
        for path in included:
            assert (ROOT / path).is_file(), f'{snippet.where}: includes {path}, which does not exist'
            assert path.startswith('docs/examples/'), (f'{snippet.where}: includes {path}; only docs/examples/ '
                                                       f'scripts are run by tests/test_examples.py')
        return
    _exec_python(snippet.text, snippet.where, tmp_path, monkeypatch)


def _included_files(text: str) -> List[str]:
    """The files a block includes with ``--8<-- "path"`` (every line must be such an include), else []."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    found = [re.fullmatch(r'--8<--\s+"([^"]+)"', ln) for ln in lines]
    return [m.group(1) for m in found] if lines and all(found) else []


def test_discovery_sees_the_pages():
    """The scan finds the blocks it must check (so a broken regex cannot pass everything vacuously)."""
    pages = {s.page.name for s in SNIPPETS}
    assert {'README.md', 'finetune.md', 'segmentation.md', 'benchmarks.md'} <= pages
    readme_cli = [argv for s in SNIPPETS if s.page.name == 'README.md' and s.kind == 'bash'
                  for argv in _commands(s.text) if argv[0] == 'mednext-zoo']
    assert len(readme_cli) >= 5
    skipped = [s.where for s in SNIPPETS if s.marker == 'no-test']
    assert len(skipped) <= 8, f'keep the no-test list small: {skipped}'


def test_checks_catch_a_broken_command(tmp_path, monkeypatch):
    """The checks fail on the README line of issue 12 (--protocol without --model) and on a bad flag."""
    for bad in ('mednext-zoo finetune --task seg --protocol synapse --data Synapse/ --out runs/synapse',
                'mednext-zoo bench --no-such-flag',
                'pip install "mednext-zoo[no_such_extra]"',
                'python benchmarks/paper_table.py --no-such-flag'):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            _check_command(shlex.split(bad), 'probe', tmp_path, monkeypatch)
    if not _released():
        with pytest.raises(AssertionError, match='no release exists yet'):
            _check_command(shlex.split('pip install mednext-zoo'), 'probe', tmp_path, monkeypatch)


# ---------------------------------------------------------------- docs stand on their own (issue 12, item 14)
_REPO_PATH = re.compile(r'`(?P<path>(?:\.\./|docs/|benchmarks/|mednext_zoo/|tests/|\.ci/)[^`\s]*'
                        r'|[A-Z][A-Z_]+\.md)`')
_LINK = re.compile(r'\]\((?P<path>[^)#\s]+)(?:#[^)]*)?\)')


def test_docs_cite_only_files_in_the_repository():
    """Paths and links in README / docs name files of this repository (not a protocols file elsewhere)."""
    missing = []
    for page in PAGES:
        text = page.read_text(encoding='utf-8')
        for m in _REPO_PATH.finditer(text):
            path = m.group('path').rstrip('/.,;:')
            if any(ch in path for ch in '<>*{}[') or "timm's" in text[max(0, m.start() - 20):m.start()]:
                continue  # a pattern, or a file of timm's own repository
            if not ((ROOT / path).exists() or (page.parent / path).exists()):
                missing.append(f'{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {path}')
        for m in _LINK.finditer(text):
            path = m.group('path')
            if re.match(r'^[a-z]+:', path):
                continue  # a URL
            if not (page.parent / path).exists():
                missing.append(f'{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: link {path}')
    assert not missing, 'docs cite files that are not in the repository:\n' + '\n'.join(missing)


def test_speed_ratios_name_their_batch():
    """Every throughput ratio in the README says at which batch it was measured (the default bench runs
    batch 8; docs/speed.md batch 16)."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    for para in re.split(r'\n\s*\n', text):
        if re.search(r'\d(?:\.\d+)?x\b', para) and 'throughput' in para:
            for sentence in re.split(r'(?<=\.)\s+(?=[A-Z(])', para):
                if re.search(r'\d(?:\.\d+)?x\b', sentence):
                    assert re.search(r'batch \d+', sentence), f'README ratio without its batch: {sentence!r}'


def test_default_bench_time_is_stated_once():
    """README and docs/benchmarks.md give the same run time for the default ``mednext-zoo bench``."""
    pattern = re.compile(r'about\s+(\d+)\s+s,?\s+(?:on\s+)?(?:two|2)\s+idle\s+cores')
    found = {}
    for page in (ROOT / 'README.md', ROOT / 'docs' / 'benchmarks.md'):
        values = pattern.findall(page.read_text(encoding='utf-8'))
        assert values, f'{page.name} does not state the default bench time as "about N s on two idle cores"'
        found[page.name] = set(values)
    assert len(set().union(*found.values())) == 1, f'the default bench time disagrees: {found}'


def test_reproduce_dry_run_transcripts_show_the_recipe_the_command_prints():
    """docs/reproduce.md and benchmarks/results/reproduce_dry_runs.txt quote `reproduce --dry-run` at
    --img-size 32: their recipe lines are what the command prints now (lr, gradient clipping and all)."""
    from mednext_zoo.reproduce import PROTOCOLS
    from mednext_zoo.reproduce.runner import _recipe_text, build_config
    transcript = (ROOT / 'benchmarks' / 'results' / 'reproduce_dry_runs.txt').read_text()
    page = (ROOT / 'docs' / 'reproduce.md').read_text()
    for tag, protocol in PROTOCOLS.items():
        line = f'  recipe      {_recipe_text(protocol, build_config(protocol, 0, "RUN", "DATA", img_size=32))}'
        assert line in transcript, f'{tag}: regenerate benchmarks/results/reproduce_dry_runs.txt ({line})'
        if tag == 'mednext_base.sarscov2_ct':
            assert line in page, f'docs/reproduce.md, "A dry run": {line}'
    assert 'gradient norm clipped to 1' in page
