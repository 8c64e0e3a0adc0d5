"""The package's layering (.importlinter) and its import graph: no circle, imports point down."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# lint-imports' own entry point, run by this interpreter (no console script needed on PATH).
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
        "--no-cache"]


def _lint(root, extra_path=None):
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    done = subprocess.run(LINT, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    code, out = _lint(REPO)
    assert code == 0, out[-4000:]
    assert "0 broken" in out, out[-4000:]


def test_an_upward_import_breaks_the_contracts(tmp_path):
    # The same check on a copy with one upward import: the contract must catch it.
    pytest.importorskip("importlinter")
    shutil.copytree(REPO / "keras_dpn", tmp_path / "keras_dpn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    common = tmp_path / "keras_dpn" / "models" / "common.py"
    text = common.read_text()
    assert "\nimport keras\n" in text
    common.write_text(text.replace("\nimport keras\n", "\nimport keras\nimport keras_dpn.training.trainer\n", 1))
    code, out = _lint(tmp_path, extra_path=tmp_path)
    assert code != 0, out[-4000:]
    assert "keras_dpn.models.common -> keras_dpn.training.trainer" in out, out[-4000:]
    assert "Concerns: each folder imports only the folders below it BROKEN" in out, out[-4000:]


def _circles(graph):
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle():
    # Module by module, the package root included (import-linter's acyclic
    # contract compares siblings, so `import keras_dpn` inside a module that
    # the root imports would pass it); imports inside functions count too.
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("keras_dpn", cache_dir=None)
    assert _circles(graph) == []


def test_circle_finder_sees_a_circle():
    class Graph:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert _circles(Graph()) == [["a", "b", "c"]]


def test_import_does_not_load_the_exporters():
    # A child process: this one has imported everything already.
    code = ("import sys, keras_dpn\n"
            "print(sorted(m for m in ('keras_dpn.deploy.export', 'keras_dpn.deploy.calibration', "
            "'keras_dpn.deploy.export_eval', 'keras_dpn.deploy.qat') if m in sys.modules))\n"
            "print(keras_dpn.deploy.export.__name__, 'keras_dpn.deploy.calibration' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == ["[]", "keras_dpn.deploy.export True"], done.stdout


def test_public_api_is_listed():
    import keras_dpn

    assert len(set(keras_dpn.__all__)) == len(keras_dpn.__all__)
    assert [n for n in keras_dpn.__all__ if not hasattr(keras_dpn, n)] == []
    for name in ("DPN4_32", "HRNetW32", "get_model", "MODELS", "PoseEstimator",
                 "build_dataset", "Trainer", "HeatmapCodec", "KeypointSpec", "JointsMSE"):
        assert name in keras_dpn.__all__


def private_reaches(root):
    """``file:line: name`` wherever a module of keras_dpn uses another module's private name.

    A leading underscore marks what only its own module may use; a name another
    module needs is public (and documented), so that an edit to a private name
    never breaks a file that is not its own. Module aliases (``from keras_dpn.core
    import optional as _optional``) are not private names.
    """
    import ast

    def is_module(dotted):
        base = root.joinpath(*dotted.split("."))
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()

    def private(name):
        return name.startswith("_") and not name.startswith("__")

    found = []
    for path in sorted((root / "keras_dpn").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(root)
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_dpn"):
                for alias in node.names:
                    if is_module(f"{node.module}.{alias.name}"):
                        aliases.add(alias.asname or alias.name)
                    elif private(alias.name):
                        found.append(f"{where}:{node.lineno}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                aliases.update(a.asname for a in node.names
                               if a.name.startswith("keras_dpn") and a.asname)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and private(node.attr)):
                found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    assert private_reaches(REPO) == []


def test_private_reaches_are_found(tmp_path):
    package = tmp_path / "keras_dpn"
    (package / "core").mkdir(parents=True)
    for name in ("__init__.py", "core/__init__.py", "core/io_utils.py"):
        (package / name).write_text("")
    (package / "a.py").write_text(
        "from keras_dpn.core import io_utils\n"
        "from keras_dpn.core import io_utils as _io\n"
        "from keras_dpn.core.io_utils import _hidden, public\n"
        "io_utils._mode(1)\n_io.public()\nio_utils.__name__\n")
    assert private_reaches(tmp_path) == [
        "keras_dpn/a.py:3: keras_dpn.core.io_utils._hidden", "keras_dpn/a.py:4: io_utils._mode"]
