"""What the download tests share: a ``http.server`` on 127.0.0.1 in a thread (nothing
leaves the machine) and a private registry and Keras cache per test."""

import contextlib
import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/short/<file>`` announces the full length and sends half."""

    def do_GET(self):
        if self.path.startswith("/short/"):
            path = os.path.join(self.directory, self.path[len("/short/"):])
            data = open(path, "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder):
    """Yields the base URL (``http://127.0.0.1:PORT``) of a server for ``folder``."""
    handler = functools.partial(Handler, directory=os.fspath(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port():
    """A local port nothing listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def tree(folder):
    """Every file and folder under ``folder`` (relative), or [] if it does not exist."""
    if not os.path.isdir(folder):
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), folder))
    return sorted(out)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty weights registry and a private Keras cache; returns the cache's
    ``keras_dpn`` folder (``KERAS_HOME`` is read at call time, so downloads land there)."""
    from keras_dpn.hub import weights as weights_lib

    monkeypatch.setattr(weights_lib, "_REGISTRY", {})
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home" / "keras_dpn"


@pytest.fixture(autouse=True)
def _isolated_always(isolated):
    """Applies :func:`isolated` to every test of a module that imports both."""
    return isolated
