"""``recsys report`` on tiny trained runs: every section is there, every image is a real
picture, and the tables and examples agree with references computed here."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recsys.artifacts import RunFolder
from recsys.cli import main
from recsys.models.quantizer import QuantizerConfig, assign_semantic_ids, build_quantizer
from recsys.report.build import SECTIONS
from recsys.report.data import group_curves, item_categories, pick_users, read_curves
from recsys.train.config import parse_run_config
from recsys.train.runner import train_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """mf with titles, genres and semantic IDs; mf without an item table; popularity."""
    from conftest import synthetic_interactions

    root = tmp_path_factory.mktemp("report")
    inter = synthetic_interactions(n_users=40, n_items=24, per_user=8)
    inter.to_csv(root / "inter.csv", index=False)
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(24)],
            "title": [f"Film {i} <{'abcd'[i % 4]}>" for i in range(24)],
            "genre": [f"{'Drama Comedy Horror Western'.split()[i % 4]}|Other" for i in range(24)],
        }
    )
    items.to_csv(root / "items.csv", index=False)

    def train(name: str, model: dict, with_items: bool) -> RunFolder:
        data = {"dataset": "table", "interactions": {"path": str(root / "inter.csv")}}
        if with_items:
            data["items"] = {"path": str(root / "items.csv")}
        config = {
            "name": name,
            "output_dir": str(root / "runs"),
            "data": data,
            "model": model,
            "trainer": {"max_epochs": 3, "progress_bar": False, "sampling": {"batch_size": 64}},
        }
        return train_run(parse_run_config(config))

    mf = train("mf", {"kind": "mf", "dim": 8}, True)
    _, item_emb = mf.embeddings()
    quantizer = build_quantizer(QuantizerConfig(kind="rqkmeans", levels=2, codebook_size=4))
    codes = quantizer.fit(item_emb).encode(item_emb)
    sids = assign_semantic_ids(codes).numpy()
    mf.write_semantic_ids("items", mf.item_map().ids, sids, {"codebook_size": 4})
    plain = train("plain", {"kind": "mf", "dim": 8}, False)
    pop = train("pop", {"kind": "popularity"}, True)
    return {"mf": mf, "plain": plain, "pop": pop, "inter": inter, "items": items}


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("html") / "report.html"
    args = [str(runs[n].root) for n in ("mf", "plain", "pop")]
    assert main(["report", *args, "--out", str(out), "--example-users", "2"]) == 0
    return out.read_text()


def section(html: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', html, flags=re.S)
    assert match, f"section {name} missing"
    return match.group(1)


def test_every_section_and_image(report):
    for name in SECTIONS:
        section(report, name)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report)
    # curves of mf and plain + their comparison, code usage of mf, 2 projections
    assert len(images) == 6
    for data in images:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        assert image.width > 100 and image.height > 100
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 10, "a blank picture"
    # Self-contained: nothing fetched when the file is opened.
    assert not re.search(r"<(script|link|iframe)\b", report)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", report)


def test_sections_say_what_is_missing(report):
    curves = section(report, "curves")
    assert "pop</h3>" in curves and "no training curves" in curves
    sids = section(report, "semantic-ids")
    assert sids.count("no semantic IDs in this run") == 2
    projection = section(report, "projection")
    assert "first semantic-ID code" in projection  # mf
    assert "log(1 + training interactions)" in projection  # plain: no item table
    assert "nothing to project" in projection  # popularity: 1-D scores


def test_metrics_table_matches_metrics_json(runs, report):
    table = section(report, "metrics")
    for name in ("mf", "plain", "pop"):
        m = runs[name].metrics()
        row = re.search(rf'<td class="name">{name}</td>(.*?)</tr>', table).group(1)
        cells = [re.sub("<.*?>", "", c) for c in re.findall(r"<td>(.*?)</td>", row)]
        expected = [f"{m['test'][k]:.4f}" for k in ("ndcg@10", "recall@10", "recall@20")]
        assert cells[:3] == expected
        assert cells[8] == str(m["training"]["epochs"])
    best = max(runs[n].metrics()["test"]["ndcg@10"] for n in ("mf", "plain", "pop"))
    assert f"<b>{best:.4f}</b>" in table


def test_semantic_id_collisions_and_prefix_titles(runs, report):
    frame = runs["mf"].semantic_ids("items")
    codes = frame[["c0", "c1"]].to_numpy()
    _, counts = np.unique(codes, axis=0, return_counts=True)
    colliding = int(counts[counts > 1].sum())
    assert f"Before disambiguation <b>{colliding}</b> items" in section(report, "semantic-ids")
    # The most populated 2-level prefix lists the titles of its items.
    prefixes, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    top = int(np.argmax(counts))  # first maximum = the smallest such prefix
    label = "-".join(map(str, prefixes[top]))
    examples = section(report, "examples")
    block = re.search(rf"<b>prefix {label}</b> \((\d+) items\)<ul>(.*?)</ul>", examples)
    assert int(block.group(1)) == counts[top]
    titles = dict(zip(runs["items"].item_id, runs["items"].title, strict=True))
    members = frame.item_id[inverse.reshape(-1) == top]
    listed = re.findall(r"<li>(.*?)</li>", block.group(2))
    expected = {titles[i].replace("<", "&lt;").replace(">", "&gt;") for i in members}
    assert set(listed[:10]) <= expected and len(listed) == min(10, len(members))


def test_example_users_history_and_top10_against_brute_force(runs, report):
    run, inter, items = runs["mf"], runs["inter"], runs["items"]
    users = pick_users(run, 2)
    assert len(users) == 2 and users[0] != users[1]
    titles = dict(zip(items.item_id, items.title, strict=True))
    user_emb, item_emb = run.embeddings()
    item_ids = run.item_map().ids
    examples = section(report, "examples").split("<h3>plain</h3>")[0]
    for u in users:
        user_id = run.user_map().ids[u]
        # Leave-one-out: the last interaction (by time) is the test item, the rest history.
        own = inter[inter.user_id == user_id].sort_values("timestamp")
        history, test_item = own.item_id.tolist()[:-1], own.item_id.tolist()[-1]
        scores = item_emb.astype(np.float64) @ user_emb[u].astype(np.float64)
        seen = np.isin(item_ids, history)
        scores[seen] = -np.inf
        top = item_ids[np.argsort(-scores, kind="stable")[:10]]
        block = re.search(rf"<b>user {user_id}</b>(.*?)</ol>", examples, flags=re.S).group(1)
        hist_html, recs_html = block.split("top-10:")
        esc = lambda s: s.replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
        shown_hist = re.findall(r"<li>([^<]*)</li>", hist_html)
        assert shown_hist == [esc(titles[i]) for i in history[-10:]]
        shown_recs = re.findall(r"<li(?: class=\"hit\")?>(.*?)</li>", recs_html)
        assert shown_recs == [esc(titles[i]) for i in top]
        hits = re.findall(r'<li class="hit">(.*?)</li>', recs_html)
        assert hits == ([esc(titles[test_item])] if test_item in top else [])


def test_item_categories_take_the_first_genre(runs):
    column, values = item_categories(runs["pop"])
    ids = runs["pop"].item_map().ids
    expected = {f"i{i}": "Drama Comedy Horror Western".split()[i % 4] for i in range(24)}
    assert column == "genre" and list(values) == [expected[i] for i in ids]
    assert item_categories(runs["plain"]) is None


def test_curves_merge_train_and_validation_rows(runs):
    raw = pd.read_csv(runs["mf"].log_dir / "metrics.csv")
    curves = read_curves(runs["mf"])
    assert list(curves.index) == [1, 2, 3]
    for epoch in range(3):
        rows = raw[raw.epoch == epoch]
        for column in ("train/loss", "val/ndcg@10"):
            assert curves.loc[epoch + 1, column] == rows[column].dropna().iloc[-1]
    assert read_curves(runs["pop"]) is None


def test_report_needs_complete_run_folders(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_curve_panels_group_loss_terms_and_metric_families():
    columns = [
        "train/loss",
        "val/loss",
        "train/recon_loss",
        "train/sid_utilization_l1",
        "train/sid_utilization_mean",
        "train/sid_utilization_l0",
        "train/sid_perplexity_l0",
        "train/sid_collision_rate",
        "val/ndcg@20",
        "val/ndcg@5",
        "val/mrr",
    ]
    assert group_curves(columns) == {
        "loss": ["train/loss", "val/loss"],
        "recon_loss": ["train/recon_loss"],
        "mrr": ["val/mrr"],
        "ndcg": ["val/ndcg@5", "val/ndcg@20"],
        "sid_collision_rate": ["train/sid_collision_rate"],
        "sid_perplexity": ["train/sid_perplexity_l0"],
        "sid_utilization": [
            "train/sid_utilization_l0",
            "train/sid_utilization_l1",
            "train/sid_utilization_mean",
        ],
    }
