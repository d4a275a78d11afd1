"""A password in a store's URL is never written or printed (issue: credentials in URLs).

A real HTTP server on 127.0.0.1 serves a store only to ``user:password``
(basic auth); the commands read it through ``http://user:password@...`` and
every byte they print, and every file they write, is searched for the
password and the user.
"""

import base64
import functools
import threading
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from distkm.io.stores import write_store
from tests.helpers import distkm

USER, PASSWORD = "alice", "pa55-w0rd-7zq"
CLUSTER = ["--n-workers", "1"]


class _BasicAuthHandler(SimpleHTTPRequestHandler):
    """Files of a folder, to the one user with the password only."""

    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def do_GET(self):
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="distkm-test"')
            self.end_headers()
            return
        super().do_GET()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def http_store(tmp_path):
    """A small labelled store served over HTTP behind basic auth; yields its URL with the credentials."""
    served = tmp_path / "served"
    rs = np.random.RandomState(0)
    write_store(served / "m.zarr", rs.randint(0, 256, (600, 16), dtype=np.uint8), rs.randint(0, 3, 600).astype(
        np.uint8), {"image_shape": [4, 4], "splits": {"train": [0, 500], "test": [500, 600]}}, chunk_rows=200)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_BasicAuthHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        # the server does refuse a reader without the password: the URL's credentials are really used
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/m.zarr/zarr.json", timeout=10)
        yield f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/m.zarr"
    finally:
        server.shutdown()
        server.server_close()


def test_no_command_writes_or_prints_the_password_of_a_store_url(http_store, tmp_path):
    out = tmp_path / "out"
    commands = [
        ["fit", http_store, "--split", "train", "--k", 3, "--seed", 0, "--out", out / "run", "--no-pictures"],
        ["evaluate", out / "run", "--data", http_store, "--no-pictures"],
        ["predict", out / "run", http_store, "--split", "test", "--out", out / "labels.zarr"],
        ["sweep", http_store, "--k", "2,3", "--out", out / "sweep", "--no-pictures", "--silhouette-sample", 0],
        ["augment", http_store, "--split", "train", "--n", 700, "--out", out / "aug.zarr"],
        ["fit", http_store, "--split", "nosuch", "--k", 3, "--out", out / "refused"],  # an error line too
    ]
    printed = []
    for argv in commands:
        result = distkm(*argv, *CLUSTER)
        printed.append(result.stdout + result.stderr)
        assert result.returncode == (1 if "nosuch" in argv else 0), result.stderr
    assert "127.0.0.1" in printed[0] and "has no split 'nosuch'" in printed[-1]
    for text in printed:
        assert PASSWORD not in text and f"{USER}:" not in text, text
    files = [f for f in out.rglob("*") if f.is_file()]
    assert {"model.json", "evaluation.json", "report.md", "sweep.json", "zarr.json"} <= {f.name for f in files}
    for f in files:
        body = f.read_bytes()
        assert PASSWORD.encode() not in body and f"{USER}:".encode() not in body, f
