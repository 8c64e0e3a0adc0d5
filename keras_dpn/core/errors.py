"""An ``argparse.ArgumentParser`` whose usage errors are one line.

argparse prints the whole usage block (18 lines for ``keras-dpn train``)
before the message of a bad option; the package's command lines report
errors in one line, as every other error of the package is reported.
"""

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose ``error()`` prints ``prog: error: message`` and
    where to find the options, on one line, then exits with status 2 (as argparse does).

    Subparsers made by ``add_subparsers`` are of this class too.

    Example:
    >>> parser = ArgumentParser(prog="tool")
    >>> _ = parser.add_argument("--backend", choices=("jax", "torch"))
    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     try:
    ...         parser.parse_args(["--backend", "mxnet"])
    ...     except SystemExit as e:
    ...         print(e.code)
    2
    >>> print(err.getvalue(), end="")  # doctest: +ELLIPSIS
    tool: error: argument --backend: invalid choice: 'mxnet' (choose from ...) (options: tool --help)
    """

    def error(self, message):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (options: {self.prog} --help)\n")
