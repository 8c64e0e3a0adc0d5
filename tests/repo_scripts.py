"""The repository's scripts (recipes/, benchmarks/, docs/examples/) as modules, for tests.

Those folders are no packages and are never put on ``sys.path``
(``tests/test_repo_hygiene.py``): a test loads a script by its file path.
"""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relative_path):
    """Runs the script at ``relative_path`` (from the repository root) as a module.

    Its ``if __name__ == "__main__"`` block does not run.

    Args:
        relative_path: e.g. ``"recipes/train_coco.py"``.

    Returns:
        The module, named after the file (``train_coco``).
    """
    path = os.path.join(REPO, relative_path)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
