"""Atomic file and folder writes.

Everything this package writes (shards, checkpoints, results, exports) goes
through these helpers so that a killed process never leaves a file or folder
that looks complete: data is written under a temporary name in the same
directory and renamed into place only once it is whole.
"""

import contextlib
import os
import shutil
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path, directory=False):
    # mkstemp/mkdtemp create private (0600/0700) entries; what we publish gets
    # the permissions an ordinary open()/mkdir() would have given it.
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """Yields a file object; on success the file appears at ``path`` at once.

    On any exception the temporary file is removed and ``path`` is untouched.

    Example:
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.txt")
    >>> with atomic_file(p, "w") as f:
    ...     _ = f.write("hello")
    >>> open(p).read()
    'hello'
    """
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary *path* (not a file object) that is renamed to ``path``.

    For writers that insist on opening the file themselves (TFRecordWriter,
    ``model.save``). The temporary name keeps the suffix of ``path`` so that
    writers that dispatch on the extension still work.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    stem, dot, ext = base.partition(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.partial-", suffix=dot + ext, dir=directory)
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(tmp):
            _publish_mode(tmp, directory=os.path.isdir(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Yields a temporary directory that replaces ``path`` when the block succeeds.

    Args:
        path: the final directory.
        overwrite: if False and ``path`` exists, raises ``FileExistsError``
            before anything is written. If True, the old directory is replaced
            only after the new one is complete.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: ``path`` (or a folder above it) is something other than
            a directory, e.g. a regular file: it is never replaced by a folder.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"The output path exists and is not a folder; it is left as it is. "
                         f"Received: {path}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"Output folder already exists: {path}. Pass overwrite=True "
            "(--overwrite on the command line) to replace it.")
    parent = os.path.dirname(path)
    _makedirs(parent)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _makedirs(folder):
    """``os.makedirs``, with a one-line ValueError when a file stands in the way."""
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"Cannot create the folder: a file stands in its path. "
                         f"Received: {folder}") from None
