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
    common.write_text(text.replace("\nimport keras\n", "\nimport keras\nimport keras_dpn.training\n", 1))
    code, out = _lint(tmp_path, extra_path=tmp_path)
    assert code != 0, out[-4000:]
    assert "keras_dpn.models.common -> keras_dpn.training" in out, out[-4000:]
    assert "Layers: each imports only the layers below it BROKEN" in out, out[-4000:]


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
            "print(sorted(m for m in ('keras_dpn.export', 'keras_dpn.calibration', "
            "'keras_dpn.export_eval', 'keras_dpn.qat') if m in sys.modules))\n"
            "print(keras_dpn.export.__name__, 'keras_dpn.calibration' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == ["[]", "keras_dpn.export True"], done.stdout


def test_public_api_is_listed():
    import keras_dpn

    assert len(set(keras_dpn.__all__)) == len(keras_dpn.__all__)
    assert [n for n in keras_dpn.__all__ if not hasattr(keras_dpn, n)] == []
    for name in ("DPN4_32", "HRNetW32", "get_model", "MODELS", "PoseEstimator",
                 "build_dataset", "Trainer", "HeatmapCodec", "KeypointSpec", "JointsMSE"):
        assert name in keras_dpn.__all__
