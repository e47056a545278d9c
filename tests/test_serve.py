"""The HTTP API through FastAPI's test client: every endpoint, every error case."""

from __future__ import annotations

import hashlib
import shutil
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from recsys.artifacts import RunFolder
from recsys.errors import ArtifactError, RecsysError
from recsys.serve.app import create_app
from recsys.serve.config import ServeConfig


class HashEncoder:
    """Deterministic fake content encoder: vector and semantic ID from a hash of the
    item's id and title; ``fail`` makes it reject content, ``dim`` breaks its output."""

    def __init__(self, dim: int, fail: bool = False) -> None:
        self.dim, self.fail, self.frames = dim, fail, []

    def encode(self, items: pd.DataFrame):
        self.frames.append(items)
        if self.fail:
            raise ValueError("title is required")
        vecs, sids = [], []
        for _, row in items.iterrows():
            digest = hashlib.sha256(f"{row.item_id}|{row.get('title')}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            vecs.append(rng.normal(size=self.dim) * 3)
            sids.append([digest[0] % 3, digest[1] % 2, 0])
        return np.asarray(vecs, np.float32), np.asarray(sids, np.int64)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    """The shared tiny run, copied, with hand-made semantic IDs for i0..i19 only."""
    from test_index import tiny_run

    src = tiny_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve") / "run"
    shutil.copytree(src.root, root)
    run = RunFolder(root)
    ids = [f"i{n}" for n in range(20)]
    codes = [(n % 3, n // 10) for n in range(20)]  # 6 code pairs: suffixes disambiguate
    sid = np.array([(*c, codes[:n].count(c)) for n, c in enumerate(codes)])
    run.write_semantic_ids("items", np.array(ids), sid, {})
    return run


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory) -> RunFolder:
    from test_index import tiny_run

    return tiny_run(tmp_path_factory)


def client_for(run: RunFolder, encoder=None, **config) -> TestClient:
    config.setdefault("index", "flat")
    config.setdefault("adds_journal", None)  # tests share run folders: no default journal
    return TestClient(create_app(run.root, ServeConfig(**config), encoder=encoder))


@pytest.fixture(scope="module")
def client(run) -> TestClient:
    return client_for(run, max_k=25, max_history=8, max_body_bytes=4096)


def brute_force(query: np.ndarray, items: np.ndarray, exclude, k: int):
    scores = torch.from_numpy(items).double() @ torch.from_numpy(query).double()
    scores[torch.as_tensor(sorted(exclude), dtype=torch.long)] = float("-inf")
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    order = order[torch.isfinite(scores[order])]
    return order.tolist(), scores[order].numpy()


def detail(r) -> str:
    """An error's message(s): ``detail`` is a string, or a list of issues (422)."""
    body = r.json()["detail"]
    return body if isinstance(body, str) else " | ".join(issue["msg"] for issue in body)


def names(body) -> list[str]:
    return [x["item_id"] for x in body["items"]]


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["n_items"] == 30


def test_readiness_while_loading_and_after_a_failed_load(run, tmp_path, monkeypatch):
    from recsys.serve import app as app_mod

    gate = threading.Event()
    real = app_mod.ServingState.load

    def slow_load(*args, **kwargs):
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_mod.ServingState, "load", slow_load)
    with TestClient(create_app(run.root, ServeConfig(index="flat"), background=True)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert c.get("/v1/users/u1/recommendations").status_code == 503
        gate.set()
        for _ in range(200):
            if c.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert c.get("/v1/users/u1/recommendations").status_code == 200
    monkeypatch.setattr(app_mod.ServingState, "load", real)
    with TestClient(create_app(tmp_path / "nope", background=True)) as c:
        for _ in range(200):
            r = c.get("/readyz")
            if r.json()["status"] != "loading":
                break
            threading.Event().wait(0.05)
        assert r.status_code == 503 and "manifest.json is missing" in detail(r)
    with pytest.raises(RecsysError, match="manifest.json"):
        create_app(tmp_path / "nope")  # foreground: fail at once


def test_user_recommendations_equal_brute_force_with_all_seen_excluded(client, run):
    users, items = run.embeddings()
    user_map, item_map = run.user_map(), run.item_map()
    frame = run.interactions()
    for u in ["u0", "u7", "u33"]:
        body = client.get(f"/v1/users/{u}/recommendations", params={"k": 5}).json()
        uidx = user_map.index(u)
        seen = set(frame[frame.user_idx == uidx].item_idx)  # train, valid and test
        expect, scores = brute_force(users[uidx], items, seen, 5)
        assert body["user_id"] == u and body["k"] == 5 and body["index"] == "flat"
        assert names(body) == item_map.to_ids(np.array(expect)).tolist()
        assert [x["rank"] for x in body["items"]] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([x["score"] for x in body["items"]], scores, rtol=1e-5)
    # Fewer unseen items than k: the list is shorter, never padded.
    full = client.get("/v1/users/u0/recommendations", params={"k": 25}).json()
    n_seen = len(frame[frame.user_idx == user_map.index("u0")].item_idx.unique())
    assert len(full["items"]) == 30 - n_seen
    default_k = client.get("/v1/users/u0/recommendations").json()
    assert default_k["k"] == 20


def test_history_recommendations_fold_in(client, run):
    _, items = run.embeddings()
    item_map = run.item_map()
    hist = ["i3", "i7", "i3"]
    body = client.post(
        "/v1/recommendations", json={"history": hist, "k": 6, "exclude": ["i1", "ghost"]}
    ).json()
    idx = item_map.to_index(hist)
    expect, scores = brute_force(items[idx].mean(axis=0), items, {*idx, item_map.index("i1")}, 6)
    assert names(body) == item_map.to_ids(np.array(expect)).tolist()
    np.testing.assert_allclose([x["score"] for x in body["items"]], scores, rtol=1e-5)


def test_similar_items_exclude_the_item_itself(client, run):
    _, items = run.embeddings()
    item_map = run.item_map()
    body = client.get("/v1/items/i4/similar", params={"k": 7}).json()
    me = item_map.index("i4")
    expect, _ = brute_force(items[me], items, {me}, 7)
    assert body["item_id"] == "i4" and names(body) == item_map.to_ids(np.array(expect)).tolist()


def test_semantic_ids(client, run, bare_run):
    body = client.get("/v1/items/i13/semantic-id").json()
    assert body["semantic_id"] == [1, 1, body["suffix"]] and body["codes"] == [1, 1]
    r = client.get("/v1/items/i25/semantic-id")  # in the catalogue, not in the table
    assert r.status_code == 404 and "no semantic ID" in detail(r)
    r = client.get("/v1/items/ghost/semantic-id")
    assert r.status_code == 404 and "unknown item 'ghost'" in detail(r)
    r = client_for(bare_run).get("/v1/items/i1/semantic-id")
    assert r.status_code == 404 and "no semantic IDs" in detail(r)


def test_semantic_candidates_are_used_and_can_be_switched_off(run, tmp_path, monkeypatch):
    """With semantic IDs, candidates from the history's prefixes join the ANN hits. An
    IVF probing one of six lists misses items; the prefix buckets bring some back. (Extra
    candidates can only add overlap with the exact top-k: everything is rescored.)"""
    from recsys.index import faiss_index
    from recsys.index.run_index import IndexConfig, build_for_run

    # 30 items: every query would be deep enough to be scored exactly, or to widen the
    # probe to every list; keep the narrow ANN path this test is about.
    monkeypatch.setattr(faiss_index, "EXACT_DEPTH", 1.0)
    monkeypatch.setattr(faiss_index.ItemIndex, "_breadth", lambda self, fetch, k: None)

    root = tmp_path / "run"
    shutil.copytree(run.root, root)
    copy = RunFolder(root)
    build_for_run(copy, IndexConfig(kind="ivf", nlist=6, nprobe=1)).save(copy)
    on = client_for(copy, index="ivf")
    off = client_for(copy, index="ivf", semantic={"enabled": False})
    exact = client_for(copy, index="flat", semantic={"enabled": False})
    hits = {"on": 0, "off": 0}
    for u in [f"u{n}" for n in range(40)]:
        truth = set(names(exact.get(f"/v1/users/{u}/recommendations?k=5").json()))
        for name, c in (("on", on), ("off", off)):
            got = names(c.get(f"/v1/users/{u}/recommendations?k=5").json())
            hits[name] += len(truth & set(got))
    assert hits["off"] < hits["on"] <= 200


def test_bad_input_gets_4xx_never_500(client):
    cases = [
        ("get", "/v1/users/ghost/recommendations", None, 404),
        ("get", "/v1/users/u1/recommendations?k=0", None, 422),
        ("get", "/v1/users/u1/recommendations?k=-3", None, 422),
        ("get", "/v1/users/u1/recommendations?k=26", None, 422),  # max_k 25
        ("get", "/v1/users/u1/recommendations?k=1e99", None, 422),
        ("get", "/v1/users/u1/recommendations?k=99999999999999999999999", None, 422),
        ("get", "/v1/users/u1/recommendations?k=abc", None, 422),
        ("get", "/v1/items/ghost/similar", None, 404),
        ("get", "/v1/items/i1/similar?k=0", None, 422),
        ("get", "/v1/items/%F0%9F%98%80/similar", None, 404),
        ("post", "/v1/recommendations", {"history": ["ghost"]}, 404),
        ("post", "/v1/recommendations", {"history": []}, 422),
        ("post", "/v1/recommendations", {"history": ["i1"], "k": 0}, 422),
        ("post", "/v1/recommendations", {"history": ["i1"], "k": 26}, 422),
        ("post", "/v1/recommendations", {"history": ["i1"], "kk": 3}, 422),  # unknown field
        ("post", "/v1/recommendations", {"history": "i1"}, 422),
        ("post", "/v1/recommendations", {"history": [1, 2]}, 422),
        ("post", "/v1/recommendations", {"history": ["x" * 600]}, 422),
        ("post", "/v1/recommendations", [1, 2], 422),
        ("post", "/v1/recommendations", {"history": ["i1"] * 9}, 422),  # max_history 8
        ("post", "/v1/recommendations", {"history": ["i1"], "exclude": ["i2"] * 9}, 422),
        ("post", "/v1/recommendations", {"history": ["i1"] * 1000}, 413),  # body > 4096 B
        ("post", "/v1/items", {"item_id": "new"}, 501),  # no content encoder
        ("post", "/v1/items", {"text": {"title": "x"}}, 422),
        ("get", "/v1/nothing", None, 404),
        ("delete", "/v1/items", None, 405),
    ]
    for method, url, body, status in cases:
        r = client.request(method, url, json=body)
        assert r.status_code == status, (method, url, body, r.status_code, r.text)
        assert isinstance(r.json()["detail"], str | list)
    for raw in [b"{not json", b"", b'{"history": ["i1"]', b"\xff\xfe"]:
        r = client.post(
            "/v1/recommendations", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, raw
    r = client.post("/v1/items", json={"item_id": "n1"})
    assert "no content encoder" in detail(r)
    r = client.get("/v1/users/u1/recommendations?k=26")
    (issue,) = r.json()["detail"]  # the bound is the schema's: FastAPI's own 422
    assert issue["loc"] == ["query", "k"] and "less than or equal to 25" in issue["msg"]


def test_add_item_is_retrievable_and_failed_adds_change_nothing(run, tmp_path):
    encoder = HashEncoder(dim=8)
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"png")
    c = client_for(run, encoder, image_root=str(images))
    n0 = c.get("/readyz").json()["n_items"]
    r = c.post(
        "/v1/items",
        json={
            "item_id": "new/1",
            "text": {"title": "Red lipstick"},
            "tabular": {"price": 9.5, "brand": "acme"},
            "image_path": "a.png",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["item_id"] == "new/1" and body["n_items"] == n0 + 1
    frame = encoder.frames[-1]
    assert frame.iloc[0].to_dict() == {
        "item_id": "new/1",
        "image_path": str((images / "a.png").resolve()),
        "title": "Red lipstick",
        "price": 9.5,
        "brand": "acme",
    }
    vec, sid = encoder.encode(frame)
    assert body["semantic_id"][:2] == sid[0, :2].tolist()
    # Retrievable at once: its semantic ID, its neighbours, and as a neighbour.
    got = c.get("/v1/items/new/1/semantic-id").json()
    assert got["semantic_id"] == body["semantic_id"]
    _, items = run.embeddings()
    item_map = run.item_map()
    sim = c.get("/v1/items/new/1/similar?k=5").json()
    expect, _ = brute_force(vec[0], items, set(), 5)
    assert names(sim) == item_map.to_ids(np.array(expect)).tolist()
    best = item_map.ids[expect[0]]
    back = names(c.get(f"/v1/items/{best}/similar?k=25").json())
    assert "new/1" in back
    hist = c.post("/v1/recommendations", json={"history": ["new/1"], "k": 3}).json()
    assert names(hist) == names(sim)[:3]
    # Failures leave the catalogue as it was.
    assert c.post("/v1/items", json={"item_id": "new/1"}).status_code == 409
    assert c.post("/v1/items", json={"item_id": "i3"}).status_code == 409
    r = c.post("/v1/items", json={"item_id": "x", "image_path": "../../etc/passwd"})
    assert r.status_code == 422 and "outside the image root" in detail(r)
    r = c.post("/v1/items", json={"item_id": "x", "image_path": "missing.png"})
    assert r.status_code == 422
    r = c.post("/v1/items", json={"item_id": "x", "text": {"item_id": "y"}})
    assert r.status_code == 422 and "own column" in detail(r)  # the schema says so
    r = c.post("/v1/items", json={"item_id": "x", "text": {"a": "y"}, "tabular": {"a": 1}})
    assert r.status_code == 422 and "given twice" in detail(r)
    bad = client_for(run, HashEncoder(dim=8, fail=True))
    r = bad.post("/v1/items", json={"item_id": "x"})
    assert r.status_code == 422 and "title is required" in detail(r)
    wrong = client_for(run, HashEncoder(dim=5))
    r = wrong.post("/v1/items", json={"item_id": "x"})
    assert r.status_code == 409 and "shape (1, 5)" in detail(r)
    for cl in (c, bad, wrong):
        assert cl.get("/v1/items/x/similar").status_code == 404
    assert c.get("/readyz").json()["n_items"] == n0 + 1
    assert c.get("/readyz").json()["n_added"] == 1
    no_root = client_for(run, HashEncoder(dim=8))
    r = no_root.post("/v1/items", json={"item_id": "x", "image_path": "a.png"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image_path"]
    schema = no_root.get("/openapi.json").json()["components"]["schemas"]["ItemContent"]
    assert schema["properties"]["image_path"]["type"] == "null"  # the schema says so
    capped = client_for(run, HashEncoder(dim=8), max_added_items=0)
    assert capped.post("/v1/items", json={"item_id": "x"}).status_code == 409


def test_reads_do_not_wait_for_adds(run):
    """Readers never take the writer lock: with an add holding it, reads still answer."""
    app = create_app(
        run.root, ServeConfig(index="flat", adds_journal=None), encoder=HashEncoder(dim=8)
    )
    c = TestClient(app)
    state = app.state.loader.state
    before = state.snapshot
    with state._write_lock:  # an add in progress
        assert c.get("/v1/users/u1/recommendations").status_code == 200
        assert c.get("/v1/items/i1/similar").status_code == 200
    assert state.snapshot is before  # nothing published by reads
    assert c.post("/v1/items", json={"item_id": "z"}).status_code == 201
    assert state.snapshot is not before and len(before.items) == 30  # copy-on-write


def test_adds_journal_shares_items_between_workers_and_restarts(run, tmp_path):
    journal = tmp_path / "adds.jsonl"
    cfg = {"adds_journal": str(journal)}
    a = client_for(run, HashEncoder(dim=8), **cfg)  # two workers of one server
    b = client_for(run, HashEncoder(dim=8), **cfg)
    assert a.post("/v1/items", json={"item_id": "j1", "text": {"title": "t"}}).status_code == 201
    sid = a.get("/v1/items/j1/semantic-id").json()
    assert b.get("/v1/items/j1/semantic-id").json() == sid  # the very next request on b
    assert names(b.get("/v1/items/j1/similar?k=4").json()) == names(
        a.get("/v1/items/j1/similar?k=4").json()
    )
    assert b.post("/v1/items", json={"item_id": "j2"}).status_code == 201
    assert b.post("/v1/items", json={"item_id": "j1"}).status_code == 409
    assert a.post("/v1/items", json={"item_id": "j2"}).status_code == 409  # b's add, seen by a
    # A restarted worker (no encoder at all) replays the journal.
    c = client_for(run, None, **cfg)
    assert c.get("/readyz").json()["n_added"] == 2
    assert c.get("/v1/items/j1/semantic-id").json() == sid
    # A line cut short by a killed writer is ignored, then replaced by the next add.
    with open(journal, "ab") as fh:
        fh.write(b'{"item_id": "half')
    assert a.post("/v1/items", json={"item_id": "j3"}).status_code == 201
    assert client_for(run, None, **cfg).get("/readyz").json()["n_added"] == 3
    # A journal of another run is refused.
    other = tmp_path / "other.jsonl"
    other.write_text('{"kind": "recsys-added-items", "version": 1, "run": "x", "dim": 8}\n')
    with pytest.raises(RecsysError, match="another run"):
        client_for(run, None, adds_journal=str(other))
    assert issubclass(ArtifactError, RecsysError)


def test_metrics_and_openapi(run):
    c = client_for(run)
    c.get("/v1/users/u1/recommendations")
    c.get("/v1/users/ghost/recommendations")
    c.get("/v1/users/ghost/recommendations")
    text = c.get("/metrics").text
    route = "/v1/users/{user_id}/recommendations"
    assert f'recsys_http_requests_total{{method="GET",route="{route}",status="200"}} 1.0' in text
    assert f'recsys_http_requests_total{{method="GET",route="{route}",status="404"}} 2.0' in text
    assert f'recsys_http_request_duration_seconds_count{{method="GET",route="{route}"}} 3.0' in text
    assert "recsys_catalogue_items 30.0" in text  # as of the last request
    schema = c.get("/openapi.json").json()
    paths = schema["paths"]
    for path in [
        "/healthz",
        "/readyz",
        "/v1/users/{user_id}/recommendations",
        "/v1/recommendations",
        "/v1/items/{item_id}/similar",
        "/v1/items/{item_id}/semantic-id",
        "/v1/items",
    ]:
        assert path in paths, sorted(paths)
    models = schema["components"]["schemas"]
    assert {"HistoryRequest", "ItemContent", "UserRecommendations", "Error"} <= set(models)


def test_serving_and_indexing_never_import_the_training_code():
    import subprocess
    import sys

    code = (
        "import sys, recsys.serve.app, recsys.index.faiss_index, recsys.index.semantic,"
        " recsys.index.evaluate\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'torch_geometric')"
        " or m.startswith(('recsys.train', 'recsys.models'))]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_adds_are_durable_by_default_and_survive_a_restart(run, tmp_path):
    """No flag: adds go to RUN/serving/added_items.jsonl and a restarted server has them."""
    root = tmp_path / "run"
    shutil.copytree(run.root, root)
    copy = RunFolder(root)
    a = client_for(copy, HashEncoder(dim=8), adds_journal="auto")
    assert a.post("/v1/items", json={"item_id": "d1", "text": {"title": "t"}}).status_code == 201
    journal = root / "serving" / "added_items.jsonl"
    assert journal.exists() and a.get("/readyz").json()["adds_journal"] == {
        "path": str(journal),
        "skipped_lines": 0,
    }
    restarted = client_for(copy, None, adds_journal="auto")  # ServeConfig's default
    assert ServeConfig().adds_journal == "auto"
    assert restarted.get("/readyz").json()["n_added"] == 1
    assert restarted.get("/v1/items/d1/similar?k=3").status_code == 200
    # Retrained in place (a new manifest, so a new fingerprint): the old model's vectors
    # are set aside, not replayed, and the server starts.
    meta = root / "manifest.json"
    meta.write_text(meta.read_text() + "\n")
    fresh = client_for(copy, None, adds_journal="auto")
    assert fresh.get("/readyz").json()["n_added"] == 0
    aside = [p.name for p in (root / "serving").iterdir() if p.name.startswith("added_items.")]
    assert any(name.startswith("added_items.jsonl.") for name in aside), aside
    # Explicitly off: adds live in memory only.
    assert client_for(copy, HashEncoder(dim=8), adds_journal=None).get("/readyz").json()[
        "adds_journal"
    ] is None


def test_a_corrupt_journal_line_costs_one_item_and_a_warning(run, tmp_path, caplog):
    journal = tmp_path / "adds.jsonl"
    cfg = {"adds_journal": str(journal)}
    a = client_for(run, HashEncoder(dim=8), **cfg)
    assert a.post("/v1/items", json={"item_id": "c1"}).status_code == 201
    # Garbage appended while the server runs: reads and adds go on.
    with open(journal, "ab") as fh:
        fh.write(b"\x00garbage{\n")
        fh.write(b'{"item_id": "c2", "vector": [1, 2], "semantic_id": null}\n')  # wrong dim
        fh.write(b'{"item_id": "c3", "vector": [1,1,1,1,1,1,1,"x"], "semantic_id": null}\n')
    with caplog.at_level("WARNING", logger="recsys.serve.journal"):
        assert a.get("/v1/users/u1/recommendations?k=3").status_code == 200
        assert a.post("/v1/items", json={"item_id": "c4"}).status_code == 201
        assert a.get("/v1/items/c4/similar?k=3").status_code == 200
    assert sum("skipped a corrupt line" in r.message for r in caplog.records) == 3
    ready = a.get("/readyz")
    assert ready.status_code == 200 and ready.json()["adds_journal"]["skipped_lines"] == 3
    assert "recsys_journal_skipped_lines 3.0" in a.get("/metrics").text
    # At start-up: the same three lines skipped, the two good items replayed, every route up.
    b = client_for(run, None, **cfg)
    body = b.get("/readyz").json()
    assert body["n_added"] == 2 and body["adds_journal"]["skipped_lines"] == 3
    assert b.get("/v1/items/c1/similar?k=3").status_code == 200
    assert b.get("/v1/items/c2/similar?k=3").status_code == 404
    # A bad header is another matter: the file may not be a journal at all.
    other = tmp_path / "other.jsonl"
    other.write_text("not json\n")
    with pytest.raises(RecsysError, match="corrupt header"):
        client_for(run, None, adds_journal=str(other))


def test_a_slow_add_does_not_hold_up_reads(run):
    """An add encodes content (a text model can take seconds) outside the search pool: a
    read sent while an add is inside its encoder is answered before the add ends."""
    entered, release = threading.Event(), threading.Event()

    class SlowEncoder(HashEncoder):
        def encode(self, items):
            entered.set()
            assert release.wait(30)
            return super().encode(items)

    c = client_for(run, SlowEncoder(dim=8))
    result = {}
    adder = threading.Thread(
        target=lambda: result.update(r=c.post("/v1/items", json={"item_id": "slow"}))
    )
    adder.start()
    try:
        assert entered.wait(30)
        r = c.get("/v1/users/u1/recommendations?k=3")  # the add is still in its encoder
        assert r.status_code == 200 and not release.is_set() and adder.is_alive()
    finally:
        release.set()
        adder.join(30)
    assert result["r"].status_code == 201
