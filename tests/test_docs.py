"""The documentation site builds with `mkdocs build --strict`, and the README stays short.

The site (mkdocs.yml, docs/) fails its strict build on a broken link, a missing anchor or an
API reference to an object that does not exist; these tests run that build and check that a
broken link does fail it (so a relaxed `validation:` setting would be noticed).
"""

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")

_MISSING = [name for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
            if importlib.util.find_spec(name.split(".")[0]) is None
            or (name == "mkdocstrings_handlers.python"
                and importlib.util.find_spec("mkdocstrings_handlers.python") is None)]
needs_mkdocs = pytest.mark.skipif(
    bool(_MISSING), reason=f"the docs extra is not installed (missing: {', '.join(_MISSING)}); "
                           'pip install -e ".[docs]"')


def _build(config_dir, site_dir):
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir),
         "--config-file", os.path.join(str(config_dir), "mkdocs.yml")],
        cwd=config_dir, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@needs_mkdocs
def test_mkdocs_build_strict_passes(tmp_path):
    site = tmp_path / "site"
    proc = _build(REPO, site)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The API reference is generated from the docstrings, not an empty page.
    api = (site / "api" / "index.html").read_text()
    for name in ("keras_dpn.inference.estimator.PoseEstimator", "keras_dpn.models.dpn.DPN",
                 "keras_dpn.data.pipeline.build_dataset", "keras_dpn.deploy.export.export_model"):
        assert f'id="{name}"' in api, name
    # Doctests are code blocks, not Markdown (where people[0]["keypoints"] is a link).
    text = html.unescape(re.sub(r"<[^>]+>", "", api))
    assert '>>> people[0]["keypoints"].shape' in text
    # Every guide of the nav is built, and the images next to the pages are copied.
    for page in ("models", "data", "training", "backends", "evaluation", "deployment",
                 "video", "release"):
        assert (site / "guide" / page / "index.html").is_file(), page
    assert (site / "benchmarks" / "index.html").is_file()
    assert (site / "receptive_field.png").is_file()


@needs_mkdocs
def test_a_broken_link_or_anchor_fails_the_strict_build(tmp_path):
    """A copy of the site with one broken anchor and one missing page: the build must fail
    and name both."""
    shutil.copy(os.path.join(REPO, "mkdocs.yml"), tmp_path / "mkdocs.yml")
    shutil.copytree(os.path.join(REPO, "docs"), tmp_path / "docs")
    os.symlink(os.path.join(REPO, "keras_dpn"), tmp_path / "keras_dpn")
    with open(tmp_path / "docs" / "guide" / "video.md", "a") as f:
        f.write("\n[a](../benchmarks.md#no-such-section) [b](../no-such-page.md)\n")
    proc = _build(tmp_path, tmp_path / "site")
    assert proc.returncode != 0
    # Each is a warning (which --strict turns into a failure), not an INFO line.
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    for broken in ("#no-such-section", "no-such-page.md"):
        assert any(broken in line for line in warnings), (broken, proc.stderr[-3000:])


def test_readme_is_short():
    size = os.path.getsize(README)
    assert size < 15_000, f"README.md is {size} bytes: move detail into docs/ (the site)"


def _heading_slugs(path):
    from markdown.extensions.toc import slugify  # mkdocs' (and, for these headings, GitHub's)

    slugs, fence = set(), False
    with open(path) as f:
        for line in f:
            if line.startswith("```"):
                fence = not fence
            elif not fence and re.match(r"#{1,6} ", line):
                slugs.add(slugify(line.lstrip("#").strip().replace("`", ""), "-"))
    return slugs


def test_readme_links_resolve():
    """The README is read on GitHub, outside the mkdocs build: its relative links must
    point at files that exist, and its anchors at headings of those files."""
    text = open(README).read()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = os.path.join(REPO, path)
        assert os.path.exists(target), link
        if anchor:
            assert anchor in _heading_slugs(target), link


def test_readme_and_ci_install_the_same_extras():
    """The README's two commands and .ci/run install the same thing, docs extra included."""
    pattern = r'pip install (?:-q )?-e "\.\[([a-z,]+)\]"'
    readme = re.findall(pattern, open(README).read())
    ci = re.findall(pattern, open(os.path.join(REPO, ".ci", "run")).read())
    assert len(readme) == 2 and len(ci) == 1, (readme, ci)
    assert set(readme) == set(ci) and "docs" in ci[0].split(","), (readme, ci)


def test_readme_model_figures_are_the_built_models():
    """The README's first example ("0.70 M params, 1.12 GMACs at 256x192", heatmaps
    "(batch, 64, 48, 17)") states DPN4_32's own count_params and count_macs, which round to
    the paper's Table II (0.7 M, 1.1 GMACs)."""
    import keras_dpn
    from keras_dpn.models.analysis import count_macs
    text = open(README).read()
    figures = re.search(r"DPN4_32\(\)\s+# ([\d.]+) M params, ([\d.]+) GMACs at 256x192", text)
    shape = re.search(r"# \(batch, (\d+), (\d+), (\d+)\) COCO heatmaps", text)
    assert figures and shape, "the README's first example changed: update this test"
    params, gmacs = float(figures.group(1)), float(figures.group(2))
    model = keras_dpn.DPN4_32()
    assert params == round(model.count_params() / 1e6, 2)
    assert gmacs == round(count_macs(model) / 1e9, 2)
    assert tuple(map(int, shape.groups())) == model.output_shape[1:]
    assert (round(params, 1), round(gmacs, 1)) == (0.7, 1.1)
