"""Faults of a real `lookalike serve` process: kill -9 during an index job, and a disk that fills up.

The catalog's images come from a local HTTP server that holds back every image past a gate until the
test opens it, so the job is always mid-run when the fault strikes, however fast the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import make_catalog

from indexer.store_edge import MIN_FREE_BYTES

ROOT = Path(__file__).resolve().parents[1]
ITEMS, GATE = 120, 40
WAIT_S = 120  # only a hung run waits this long


class GatedImages:
    """Serves ``images/pNNN.jpg``; items from ``GATE`` on wait until ``open()``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.gate = folder, threading.Event()
        images = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                if int(name[1:4]) >= GATE:
                    images.gate.wait(WAIT_S)
                body = (images.folder / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()


@pytest.fixture
def remote_catalog(tmp_path) -> Iterator[tuple[Path, GatedImages]]:
    local = make_catalog(tmp_path / "local", n=ITEMS)
    images = GatedImages(local.parent / "images")
    rows = [json.loads(line) for line in local.read_text().splitlines()]
    catalog = tmp_path / "remote.jsonl"
    catalog.write_text("".join(json.dumps({**r, "image": f"{images.url}/{r['image']}"}) + "\n" for r in rows))
    yield catalog, images
    images.close()


@contextmanager
def lookalike_serve(data_dir: Path, tiny_clip_spec: str, text_spec: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`lookalike serve --no-ui` in its own process, on a free loopback port; yields it and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configs = Path(tiny_clip_spec.split("/", 1)[1]).parent / "configs"
    env = {
        **os.environ,
        "LOOKALIKE_CLIP_MODEL": tiny_clip_spec,
        "LOOKALIKE_TEXT_MODEL": text_spec,
        "LOOKALIKE_DEVICE": "cpu",
        "LOOKALIKE_BATCH_SIZE": "4",
        "LOOKALIKE_WORKERS": "2",
        "LOOKALIKE_PREFETCH_BATCHES": "1",
        "LOOKALIKE_ALLOW_PRIVATE_URLS": "true",  # the images come from this machine's test server
        "LOOKALIKE_LOG_LEVEL": "warning",
    }
    code = f"import open_clip; open_clip.add_model_config({str(configs)!r}); from ui.cli import main; main()"
    args = ["serve", "--no-ui", "--data-dir", str(data_dir), "--port", str(port)]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: _up(url) or proc.poll() is not None, "the server to start")
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-3000:]
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def until(ready, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()


def start_job(url: str, catalog: Path) -> str:
    r = httpx.post(f"{url}/index", json={"catalog": str(catalog)}, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def finished(url: str, job_id: str) -> dict:
    until(lambda: job(url, job_id)["status"] not in ("queued", "running"), f"job {job_id} to end")
    return job(url, job_id)


def test_kill_9_mid_job_then_restart_loses_nothing(tmp_path, remote_catalog, tiny_clip_spec, text_spec):
    catalog, images = remote_catalog
    data = tmp_path / "data"
    with lookalike_serve(data, tiny_clip_spec, text_spec) as (proc, url):
        first = start_job(url, catalog)
        # Every batch before the gate is committed; the job then waits on the held-back images.
        until(lambda: job(url, first)["done"] >= GATE - 8, "the job to reach the gate")
        committed = httpx.get(f"{url}/health", timeout=10).json()["items"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert committed >= GATE - 8
    images.gate.set()
    with lookalike_serve(data, tiny_clip_spec, text_spec) as (_, url):
        killed = job(url, first)
        assert killed["status"] == "interrupted" and "server stopped" in killed["error"]
        assert httpx.get(f"{url}/health", timeout=10).json()["items"] >= committed
        again = finished(url, start_job(url, catalog))
        assert again["status"] == "done", again
        report = again["report"]
        assert report["unchanged"] >= committed and report["new"] + report["unchanged"] == ITEMS
        assert report["failed"] == 0
        assert httpx.get(f"{url}/health", timeout=10).json()["items"] == ITEMS


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A tmpfs a little larger than the edge store's free-space floor."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size = MIN_FREE_BYTES + 96 * 2**20
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.truncate(0)
        chunk = b"\0" * 2**20
        while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > leave + len(chunk):
            f.write(chunk)
            f.flush()
    return filler


def test_a_disk_that_fills_mid_job_ends_it_with_a_clear_error(small_disk, remote_catalog, tiny_clip_spec, text_spec):
    catalog, images = remote_catalog
    with lookalike_serve(small_disk / "data", tiny_clip_spec, text_spec) as (proc, url):
        first = start_job(url, catalog)
        until(lambda: job(url, first)["done"] >= GATE - 8, "the job to reach the gate")
        filler = fill(small_disk, leave=32 * 2**20)  # below the floor, far above what one batch writes
        images.gate.set()
        failed = finished(url, first)
        assert failed["status"] == "failed", failed
        assert "disk is nearly full" in failed["error"] and "what was stored is kept" in failed["error"]
        assert proc.poll() is None  # the server lives on, and so does the store
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert GATE - 8 <= health["items"] < ITEMS
        assert httpx.post(f"{url}/search", json={"text": "red dress"}, timeout=30).status_code == 200
        filler.unlink()
        again = finished(url, start_job(url, catalog))
        assert again["status"] == "done" and again["report"]["unchanged"] == health["items"], again
        assert httpx.get(f"{url}/health", timeout=10).json()["items"] == ITEMS
