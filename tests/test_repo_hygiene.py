"""Repository-wide rules that no single module's tests would see.

No Python file of the repository edits ``sys.path``: benchmarks, recipes,
tests and docs examples import the installed package (``pip install -e .``),
and a script or test helper that is no module of it is loaded by file path
(``tests/repo_scripts.py``, ``importlib.util.spec_from_file_location``). An
edited search path imports whatever checkout or folder it names, silently,
instead of the package the tests check.
"""

import pathlib
import re
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# Its mutating methods (insert, append, ...), item or slice assignment, rebinding
# (= and +=) and del; reading it (an index, ==) is no edit. The examples below spell
# it "SP" so that this file passes its own scan.
SYS_PATH_EDIT = re.compile(
    r"\bsys\s*\.\s*path\s*(?:\.\s*(?:insert|append|extend|remove|pop|clear)\s*\("
    r"|\[[^\]]*\]\s*\+?=(?!=)|\+?=(?!=))|\bdel\s+sys\s*\.\s*path\b")


def python_files(root):
    """The repository's .py files, as git sees them: tracked, plus new ones not ignored.

    Args:
        root: the repository root.

    Returns:
        Paths relative to ``root``, sorted; files deleted in the work tree are left out.
    """
    done = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard",
         "-z", "--", "*.py"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names = sorted({n for n in done.stdout.split("\0") if n})
    return [n for n in names if (root / n).is_file()]


def sys_path_edits(root):
    """``path:line: text`` of every line of a repository .py file that edits ``sys.path``."""
    found = []
    for name in python_files(root):
        text = (root / name).read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if SYS_PATH_EDIT.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


@pytest.fixture(scope="module")
def git_checkout():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the repository")
    return REPO


def test_no_python_file_edits_sys_path(git_checkout):
    files = python_files(git_checkout)
    # An independent count: the folders the rule is about all hold scripts.
    for folder in ("benchmarks", "recipes", "tests", "tfrecords", "docs/examples", "keras_dpn"):
        assert any(f.startswith(folder + "/") for f in files), folder
    edits = sys_path_edits(git_checkout)
    assert not edits, ("import the installed package, or load a script by its file path "
                       "(tests/repo_scripts.py), instead of editing sys.path:\n"
                       + "\n".join(edits))


@pytest.mark.parametrize("line", [
    "SP.insert(0, REPO)", "    SP.append(os.path.dirname(__file__))", "SP.extend(['x'])",
    "SP[:0] = [HERE]", "SP = ['x'] + SP", "SP += ['x']", "SP.pop(0)", "del SP[0]",
    "code = 'import sys; SP.insert(0, %r)' % where",
])
def test_a_planted_edit_is_found(git_checkout, tmp_path, line):
    """The same scan on a throwaway repository with one planted line."""
    line = line.replace("SP", "sys.path")
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                       timeout=60)
    git("init", "-q")
    (tmp_path / "clean.py").write_text("import sys\nprint(sys.path[0] if sys.path else '')\n")
    assert sys_path_edits(tmp_path) == []  # reading sys.path is fine; new files are scanned
    (tmp_path / "planted.py").write_text(f"import sys\n\n{line}\n")
    git("add", "planted.py")
    assert sys_path_edits(tmp_path) == [f"planted.py:3: {line.strip()}"]


@pytest.mark.parametrize("line", [
    "print(SP)", "if SP == before:", "first = SP[0]", "if SP[0] == here:",
    "where = SP.index(x)", "# SP is searched first",
])
def test_reading_sys_path_is_not_an_edit(line):
    assert not SYS_PATH_EDIT.search(line.replace("SP", "sys.path"))
