"""``recsys serve`` as a real process on loopback, queried by the smoke script that
``make smoke`` runs: every endpoint answers 2xx, and an added item survives a restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

from recsys.artifacts import RunFolder

GENRES = ["Action", "Comedy", "Drama", "Horror"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    """A small two-stage run: semantic IDs and a content encoder, so every route works."""
    from conftest import synthetic_interactions, train_table_run

    n = 40
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n)],
            "title": [f"Movie {i}" for i in range(n)],
            "genres": [GENRES[i % 4] + "|" + GENRES[(i + 1) % 4] for i in range(n)],
            "length": [90.0 + (i * 7) % 40 for i in range(n)],
        }
    )
    return train_table_run(
        tmp_path_factory.mktemp("live"),
        synthetic_interactions(n_users=40, n_items=n),
        items,
        model={
            "kind": "two_stage",
            "dim": 8,
            "content_projection": True,
            "quantizer": {"kind": "rqkmeans", "levels": 2, "codebook_size": 4},
        },
        features={"tabular": {"multi_valued": ["genres"], "numeric": ["length"]}},
        trainer={"max_epochs": 1, "num_threads": 1},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: RunFolder, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "recsys.cli", "serve", str(run.root), "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120  # a loaded CI machine: generous, and polled
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {server.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.3)
    stop(server)
    raise AssertionError("the server did not become ready within 120 s")


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def readyz(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
        return json.loads(r.read())


def test_smoke_script_gets_2xx_from_every_endpoint_and_adds_survive_a_restart(run):
    port = free_port()
    server = start_server(run, port)
    try:
        smoke = subprocess.run(
            [sys.executable, "-m", "recsys.serve.smoke", "--run", str(run.root),
             "--url", f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        lines = smoke.stdout.splitlines()
        assert lines[-1] == "10 of 10 endpoints answered as expected", smoke.stdout
        statuses = [line.split()[1] for line in lines if line.startswith("ok ")]
        assert len(statuses) == 10 and all(s.startswith("2") for s in statuses), smoke.stdout
        assert readyz(port)["n_added"] == 1
    finally:
        stop(server)
    # No flag given: the added item was journaled under the run folder and is replayed.
    assert (run.root / "serving" / "added_items.jsonl").exists()
    port = free_port()
    server = start_server(run, port)
    try:
        assert readyz(port)["n_added"] == 1
    finally:
        stop(server)
