"""`python -m lib data fetch|verify` against a loopback mirror of the shared data directory.

The server listens on 127.0.0.1 only, on a free port, and shuts itself down after
``SERVER_LIFETIME_S`` even if a test hangs. Nothing here reaches another machine.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lib.book import fetch
from lib.book.paths import ROOT
from lib.core import data

SERVER_LIFETIME_S = 300
REMOTE = ["ud", "wikitext-2"]  # the data sets of the data directory (packaged ones install)


def shared_data() -> Path:
    env = os.environ.get("REPRO_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _complete(folder: Path) -> bool:
    return all((folder / f.relpath).is_file() for f in data.all_files(REMOTE))


class Mirror(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; paths in ``broken`` are sent damaged ("truncate": half the bytes under
    the full Content-Length, then the connection closes; "garble": right length, wrong bytes)."""

    broken: dict[str, str] = {}
    served: list[str] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        rel = self.path.lstrip("/")
        self.served.append(rel)
        how = self.broken.get(rel)
        if how is None:
            return super().do_GET()
        body = (Path(self.directory) / rel).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if how == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.wfile.write(bytes(len(body)))


@pytest.fixture(scope="module")
def mirror():
    source = shared_data()
    if not _complete(source):
        pytest.skip(f"the shared data directory {source} lacks registered files")
    handler = functools.partial(Mirror, directory=str(source))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopper = threading.Timer(SERVER_LIFETIME_S, server.shutdown)  # stops by itself
    stopper.daemon = True
    stopper.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    stopper.cancel()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fetched(mirror, tmp_path_factory):
    """An empty data directory, filled once through the command line from the mirror."""
    target = tmp_path_factory.mktemp("data")
    env = {**os.environ, "REPRO_DATA": str(target)}
    env.pop("REPRO_DATA_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "lib", "data", "fetch", *REMOTE, "--base-url", mirror],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return target, out


def test_fetch_from_the_mirror_fills_an_empty_directory(fetched):
    target, out = fetched
    assert out.returncode == 0, out.stdout + out.stderr
    n = len(data.all_files(REMOTE))
    assert f"{n} of {n} registered files present and verified" in out.stdout
    assert "CC BY-SA 3.0" in out.stdout and "CC BY-SA 4.0" in out.stdout  # the licences
    for f in data.all_files(REMOTE):
        assert data.sha256(target / f.relpath) == f.sha256, f.relpath
    assert [p.name for p in target.rglob("tmp*")] == []  # no temporary file left behind


def test_verify_passes_then_finds_a_corrupted_file_and_fetch_replaces_only_it(
    fetched, mirror, monkeypatch
):
    target, _ = fetched
    monkeypatch.setenv("REPRO_DATA", str(target))
    assert fetch.verify(REMOTE, out=io.StringIO()) == 0
    bad = target / "ud" / "UD_German-GSD" / "de_gsd-ud-test.conllu"
    good = target / "wikitext-2" / "valid.txt"
    good_stat = good.stat()
    bad.write_bytes(b"# not a treebank\n" + bad.read_bytes()[17:])  # same size, other bytes
    out = io.StringIO()
    assert fetch.verify(REMOTE, out=out) == 1
    assert "wrong sha256" in out.getvalue() and str(bad) in out.getvalue()

    Mirror.served.clear()
    assert fetch.fetch(REMOTE, base_url=mirror, out=io.StringIO()) == 0
    assert Mirror.served == ["ud/UD_German-GSD/de_gsd-ud-test.conllu"]  # only the bad one
    registered = {f.relpath: f.sha256 for f in data.all_files(REMOTE)}
    assert data.sha256(bad) == registered["ud/UD_German-GSD/de_gsd-ud-test.conllu"]
    assert fetch.verify(REMOTE, out=io.StringIO()) == 0
    assert good.stat().st_mtime_ns == good_stat.st_mtime_ns  # a good file is never rewritten


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_a_broken_download_never_leaves_a_file_that_verifies(mirror, tmp_path, monkeypatch, how):
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    rel = "wikitext-2/valid.txt"
    monkeypatch.setattr(Mirror, "broken", {rel: how})
    out = io.StringIO()
    assert fetch.fetch(["wikitext-2"], base_url=mirror, out=out) == 1
    report = out.getvalue()
    assert "could not be fetched" in report and f"{mirror}{rel}" in report
    target = tmp_path / rel
    assert not target.exists() or data.sha256(target) != data.dataset("wikitext-2").files[1].sha256
    # the other two arrived; no partial or temporary file is left
    assert sorted(p.name for p in target.parent.iterdir()) == ["test.txt", "train.txt"]


def test_offline_fetch_names_each_missing_file_its_address_and_folder(tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    monkeypatch.setenv("REPRO_DATA_URL", f"http://127.0.0.1:{port}/")
    out = io.StringIO()
    assert fetch.fetch(["wikitext-2"], out=out) == 1
    text = out.getvalue()
    for f in data.dataset("wikitext-2").files:
        assert f"http://127.0.0.1:{port}/{f.relpath}" in text
    assert f"put in {tmp_path / 'wikitext-2'}/" in text
    assert not any((tmp_path / "wikitext-2").iterdir())


def test_run_never_imports_the_downloader():
    code = (
        "import sys, lib.__main__, lib.book.runner, lib.book.sweep, lib.book.site\n"
        "print(sorted(m for m in ('pooch', 'lib.book.fetch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_address_is_pinned_to_a_commit():
    for f in data.all_files(REMOTE):
        assert re.search(r"/[0-9a-f]{40}/", f.url), f.url
        assert f.url.startswith("https://raw.githubusercontent.com/")
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0 and f.licence
