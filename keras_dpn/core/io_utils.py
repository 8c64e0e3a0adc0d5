"""Atomic file and folder writes.

Everything this package writes (shards, checkpoints, results, exports) goes
through these helpers so that a killed process never leaves a file or folder
that looks complete: data is written under a temporary name in the same
directory and renamed into place only once it is whole.

A temporary name carries the pid of its writer; the next write of the same
target removes the temporary entries of writers that are dead (kill -9,
power loss) and leaves those of live ones alone.
"""

import contextlib
import os
import re
import shutil
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path, directory=False):
    """Gives ``path`` the permissions a plain ``open()`` / ``mkdir()`` would have."""
    # mkstemp/mkdtemp create private (0600/0700) entries; what we publish gets
    # the permissions an ordinary open()/mkdir() would have given it.
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """Yields a file object; on success the file appears at ``path`` at once.

    On any exception the temporary file is removed and ``path`` is untouched.

    Example:
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "x.txt")
    ...     with atomic_file(p, "w") as f:
    ...         _ = f.write("hello")
    ...     print(open(p).read())
    hello
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
    remove_partial_leftovers(path)  # of a killed earlier write; a live one's stay
    tmp = _make_partial(directory, f".{stem}.partial-", dot + ext)
    try:
        yield tmp
        if os.path.exists(tmp):
            publish_mode(tmp, directory=os.path.isdir(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise



def check_directory_target(path, overwrite, received=None):
    """What :func:`atomic_directory` refuses about ``path``, for a check before the work.

    Args:
        path: the folder to be written or replaced.
        overwrite: whether an existing folder may be replaced.
        received: how the errors show the value (default: ``path`` itself).

    Raises:
        ValueError: ``path`` exists and is not a folder.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    received = path if received is None else received
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"The output path exists and is not a folder; it is left as it is. "
                         f"Received: {received}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"Output folder already exists: {path}. Pass overwrite=True "
            "(--overwrite on the command line) to replace it.")

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
    check_directory_target(path, overwrite)
    parent = os.path.dirname(path)
    _makedirs(parent)
    remove_partial_leftovers(path)  # of a killed earlier write; a live one's stay
    tmp = make_partial_directory(path)
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# Temporary names carry their writer's pid in the 8 characters that mkstemp
# would fill at random ("p" + 5 base-36 digits + 2 random; "P" + 6 digits + 1
# random for a larger pid), so that a rerun removes the leftovers of a killed writer but
# never a live one's.
_TOKEN_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _owner_token():
    import random

    pid, digits = os.getpid(), ""
    width = 5 if pid < 36 ** 5 else 6
    for _ in range(width):
        pid, r = divmod(pid, 36)
        digits = _TOKEN_DIGITS[r] + digits
    return ("p" if width == 5 else "P") + digits + "".join(
        random.choices(_TOKEN_DIGITS, k=7 - width))


def _make_partial(folder, prefix, suffix="", directory=False):
    """Creates ``folder/prefix + owner token + suffix`` exclusively (as mkstemp/mkdtemp do)."""
    for _ in range(1000):
        path = os.path.join(folder, f"{prefix}{_owner_token()}{suffix}")
        try:
            if directory:
                os.mkdir(path, 0o700)
            else:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"No free temporary name next to the output. Received: "
                          f"{os.path.join(folder, prefix)}*")


def make_partial_directory(path):
    """An empty ``.NAME.partial-XXXXXXXX`` folder next to ``path``, owned by this process.

    For writers that assemble several outputs before moving them into place:
    :func:`remove_partial_leftovers` of ``path`` removes it once this process
    is dead.
    """
    path = os.path.abspath(os.fspath(path))
    return _make_partial(os.path.dirname(path), f".{os.path.basename(path)}.partial-",
                         directory=True)


def partial_owner_alive(path):
    """True when the temporary entry ``path`` belongs to a process that still runs.

    Names without an owner (written by keras-dpn 0.1) count as dead. Outside
    POSIX the owner is not checked and counts as alive (nothing is removed).
    """
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    match = re.search(r"\.(?:partial|old)-(?:p([0-9a-z]{5})[0-9a-z]{2}|P([0-9a-z]{6})[0-9a-z])",
                      os.path.basename(path))
    if match is None:
        return False
    pid = int(match.group(1) or match.group(2), 36)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def partial_leftovers(path):
    """Temporary entries that a killed :func:`atomic_path` / :func:`atomic_file` /
    :func:`atomic_directory` of ``path`` left next to it (``.STEM.partial-XXXXXXXX.EXT``,
    ``.NAME.partial-XXXXXXXX``, ``.NAME.old-XXXXXXXX``); other targets' are not matched.

    Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> for n in (".clip.partial-ab12cd34.mp4", ".clip.partial-ab12cd34.b.mp4", "clip.mp4"):
    ...     open(os.path.join(d, n), "w").close()
    >>> [os.path.basename(p) for p in partial_leftovers(os.path.join(d, "clip.mp4"))]
    ['.clip.partial-ab12cd34.mp4']
    >>> import shutil; shutil.rmtree(d)
    """
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    stem, dot, ext = base.partition(".")
    # mkstemp / mkdtemp add 8 characters of [a-z0-9_]; _owner_token "P..." too.
    pattern = re.compile(
        rf"^\.(?:{re.escape(stem)}\.partial-[A-Za-z0-9_]{{8}}{re.escape(dot + ext)}"
        rf"|{re.escape(base)}\.(?:partial|old)-[A-Za-z0-9_]{{8}})$")
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names if pattern.match(n)]


def remove_partial_leftovers(path):
    """Removes :func:`partial_leftovers` of ``path``; returns their paths.

    For a rerun of a killed write: call it once the rerun owns the target
    (after its existence checks). Entries whose writer still runs (its pid is
    in the name, see :func:`partial_owner_alive`) are left alone.
    """
    found = [p for p in partial_leftovers(path) if not partial_owner_alive(p)]
    for p in found:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
    return found


def check_output_folder(folder, name="folder"):
    """One-line ``ValueError`` naming ``folder`` when nothing can be written there.

    Checked before long work starts: a regular file where ``folder`` (or a
    folder above it) should be, or a first existing folder on the way that
    refuses a file (read-only, permissions). Creates nothing that stays.
    """
    folder = os.path.abspath(os.fspath(folder))
    probe = folder
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"Cannot write into {folder}: {probe} is a file, not a folder. "
                         f"Received: {name}={folder!r}")
    try:
        # A real file, not os.access: root passes os.access on a read-only mount.
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ValueError(f"Cannot write into {folder}: {probe} refuses new files "
                         f"({e.strerror or e}). Received: {name}={folder!r}") from None


def replace_directory(tmp, path):
    """Moves the complete folder ``tmp`` to ``path`` (same file system), replacing a folder.

    The old folder is renamed aside first and removed last, so ``path`` is
    at every moment either the old folder or the new one.
    """
    path = os.path.abspath(os.fspath(path))
    publish_mode(tmp, directory=True)
    if os.path.exists(path):
        old = _make_partial(os.path.dirname(path), f".{os.path.basename(path)}.old-",
                            directory=True)
        os.rmdir(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_error(error, path, what="Cannot write"):
    """A one-line ``OSError`` (same errno) for a failed write, naming ``path``.

    Args:
        error: the ``OSError`` (or a TensorFlow / h5py error carrying an OS
            reason in its text).
        path: the output the user named.
        what: the start of the message.
    """
    import errno as errno_lib

    code = getattr(error, "errno", None)
    reason = getattr(error, "strerror", None)
    text = str(error)
    if code is None:
        for candidate in (errno_lib.ENOSPC, errno_lib.EROFS, errno_lib.EACCES, errno_lib.EDQUOT):
            if os.strerror(candidate) in text:
                code = candidate
                break
    if not reason:
        reason = os.strerror(code) if code else (text.splitlines() or [type(error).__name__])[0]
    where = getattr(error, "filename", None)
    detail = f" ({where})" if where and os.fspath(where) != os.fspath(path) else ""
    return OSError(code, f"{what} {os.fspath(path)}: {reason}{detail}")


def is_write_error(error):
    """True for an ``OSError``, or another library's error caused by one (TensorFlow's
    file system errors carry the OS reason in their text only)."""
    if isinstance(error, OSError):
        return True
    import errno as errno_lib

    text = str(error)
    return any(os.strerror(c) in text for c in (errno_lib.ENOSPC, errno_lib.EROFS,
                                                 errno_lib.EACCES, errno_lib.EDQUOT))


def _makedirs(folder):
    """``os.makedirs``, with a one-line ValueError when a file stands in the way."""
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"Cannot create the folder: a file stands in its path. "
                         f"Received: {folder}") from None
