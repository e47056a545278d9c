"""``recsys semantic-ids`` and ``recsys inspect`` on hand-built semantic-ID tables: the
printed numbers are checked against values computed by hand below."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.artifacts import RunFolder
from recsys.cli import main
from recsys.data.idmap import IdMap
from recsys.errors import ArtifactError
from recsys.report.inspect import export_semantic_ids, format_inspection, inspect_semantic_ids

# item, title, c0, c1, suffix.  Codebook size 4, two levels.
TABLE = [
    ("a", "Alien", 0, 1, 0),
    ("b", "Aliens", 0, 1, 1),
    ("c", "Toy Story", 0, 2, 0),
    ("d", "Heat", 1, 3, 0),
    ("e", "Alien 3", 0, 1, 2),
    ("f", "Fargo", 3, 3, 0),
]
# By hand: level 0 uses codes {0, 1, 3} (3/4) with counts 4, 1, 1 -> perplexity
# exp(-(4/6 ln 4/6 + 2 * 1/6 ln 1/6)) = 2.3811; level 1 uses {1, 2, 3} (3/4) with counts
# 3, 1, 2 -> exp(-(1/2 ln 1/2 + 1/6 ln 1/6 + 1/3 ln 1/3)) = 2.7495.  Code tuples: (0, 1)
# three times (a, b, e), (0, 2), (1, 3), (3, 3): 3 of 6 items collide, rate 0.5, 4 distinct
# tuples, at most 3 items per ID.
PPL = (2.381101577952299, 2.7494592739972052)


def make_run(
    root: Path,
    titles: bool = True,
    stats: dict | None = None,
    config: dict | None = None,
    train_counts: dict[str, int] | None = None,
) -> RunFolder:
    run = RunFolder(root)
    ids = [row[0] for row in TABLE]
    IdMap(ids).save(root / "id_maps" / "items.parquet")
    if titles:
        run.write_items(pd.DataFrame({"item_id": ids, "title": [row[1] for row in TABLE]}))
    if config is not None:
        run.write_config(config)
    if train_counts is not None:
        users, items = [], []
        for item, count in train_counts.items():
            users += list(range(count))
            items += [ids.index(item)] * count
        n_users = max(users) + 1
        run.write_data(
            IdMap([f"u{u}" for u in range(n_users)]),
            IdMap(ids),
            np.array(users),
            np.array(items),
            np.zeros(len(users), dtype=np.int8),
            {},
        )
    sids = np.array([row[2:] for row in TABLE])
    run.write_semantic_ids("items", np.array(ids), sids, stats or {})
    return run


def block(text: str, header: str, indent: int = 6) -> list[str]:
    """The lines indented by ``indent`` that follow ``header`` in the inspection output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(header))
    out = []
    for line in lines[start + 1 :]:
        if not line.startswith(" " * indent):
            break
        out.append(line.strip())
    return out


def test_inspect_prints_hand_computed_numbers_and_titles(tmp_path):
    run = make_run(tmp_path, stats={"codebook_size": 4})
    text = format_inspection(run, examples=5)
    assert f"level 0: 3/4 codes used (75.0%), perplexity {PPL[0]:.2f}" in text
    assert f"level 1: 3/4 codes used (75.0%), perplexity {PPL[1]:.2f}" in text
    assert "3 of 6 items share their codes with another item (collision rate 0.5000)" in text
    assert "4 distinct code tuples; at most 3 items share one ID" in text
    assert "codebook size 4 (stats.json)" in text
    # Items sharing a prefix, with titles, the most populated first.
    assert block(text, "c0=0 (4 items)") == ["Alien", "Aliens", "Toy Story", "Alien 3"]
    assert block(text, "0-1 (3 items)") == ["Alien", "Aliens", "Alien 3"]
    first = [line.strip() for line in text.splitlines() if re.match(r"\s+c0=\d", line)]
    assert first == ["c0=0 (4 items)", "c0=1 (1 item)", "c0=3 (1 item)"]
    _, summary = inspect_semantic_ids(run)
    assert [lv.used for lv in summary.levels] == [3, 3]
    np.testing.assert_allclose([lv.perplexity for lv in summary.levels], PPL, rtol=1e-12)
    assert (summary.n_colliding, summary.n_unique_ids, summary.max_rows_per_id) == (3, 4, 3)
    assert summary.collision_rate == 0.5 and summary.unique_with_suffix


def test_examples_limit_popularity_order_and_ids_without_titles(tmp_path):
    run = make_run(tmp_path / "a", train_counts={"e": 3, "b": 1, "c": 2})
    text = format_inspection(run, examples=1)
    assert block(text, "0-1 (3 items)") == ["Alien 3", "Aliens", "Alien"]  # most seen first
    assert "c0=1" not in text and "1-3" not in text  # one example per level
    bare = make_run(tmp_path / "b", titles=False)
    assert block(format_inspection(bare), "0-1 (3 items)") == ["a", "b", "e"]


def test_codebook_size_from_config_and_stats_disagreement(tmp_path):
    stats = {"collision_rate": 0.25, "utilization_l0": 3 / 8, "perplexity_l1": PPL[1]}
    run = make_run(tmp_path, stats=stats, config={"model": {"quantizer": {"codebook_size": 8}}})
    text = format_inspection(run)
    assert "level 0: 3/8 codes used (37.5%)" in text and "(config.yaml)" in text
    assert "WARNING: stats.json disagrees with the codes" in text
    warnings = block(text, "WARNING: stats.json", indent=4)
    assert warnings == ["collision_rate: stats.json says 0.25, the codes give 0.5"]

    agreeing = {
        "codebook_size": 4,
        "collision_rate": 0.5,
        "max_items_per_id": 3,
        "perplexity_l0": PPL[0],
        "utilization_l1": 0.75,
        "n_unique_ids": 4,
    }
    text = format_inspection(make_run(tmp_path / "ok", stats=agreeing))
    assert "stats.json agrees" in text and "WARNING" not in text
    unknown = format_inspection(make_run(tmp_path / "unknown"))
    assert "codebook size 4 (unknown: largest code + 1)" in unknown
    assert "stats.json has no entry" in unknown


EXPECTED = pd.DataFrame(
    {
        "item_id": [r[0] for r in TABLE],
        "c0": [r[2] for r in TABLE],
        "c1": [r[3] for r in TABLE],
        "suffix": [r[4] for r in TABLE],
        "semantic_id": ["0-1-0", "0-1-1", "0-2-0", "1-3-0", "0-1-2", "3-3-0"],
    }
)


def test_export_round_trip(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    for name in ("sids.parquet", "sids.csv"):
        out = tmp_path / name
        assert main(["semantic-ids", str(run.root), "--out", str(out)]) == 0
        got = (
            pd.read_parquet(out)
            if name.endswith(".parquet")
            else pd.read_csv(out, dtype={"item_id": str})
        )
        pd.testing.assert_frame_equal(got, EXPECTED, check_dtype=False)
    capsys.readouterr()
    assert main(["semantic-ids", str(run.root)]) == 0
    stdout = capsys.readouterr().out
    got = pd.read_csv(io.StringIO(stdout), dtype={"item_id": str})
    pd.testing.assert_frame_equal(got, EXPECTED, check_dtype=False)
    assert main(["semantic-ids", str(run.root), "--out", str(tmp_path / "x.txt")]) == 2
    assert ".parquet or .csv" in capsys.readouterr().err


def test_runs_without_semantic_ids_are_a_clear_error(tmp_path, capsys):
    run = RunFolder(tmp_path)
    IdMap(["a", "b"]).save(tmp_path / "id_maps" / "items.parquet")
    for command in (["semantic-ids", str(tmp_path)], ["inspect", str(tmp_path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "no semantic IDs for items" in err
    with pytest.raises(ArtifactError, match="semantic_ids/items.parquet is missing"):
        export_semantic_ids(run, None)
    assert main(["semantic-ids", str(make_run(tmp_path / "r").root), "--side", "users"]) == 2
    assert "no semantic IDs for users" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.parquet"))


def test_cli_inspect_prints_the_summary(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["inspect", str(run.root), "--examples", "2"]) == 0
    out = capsys.readouterr().out
    assert "level 1: 3/4 codes used (75.0%)" in out and "Alien 3" in out


def test_user_side_uses_its_own_quantizer_size(tmp_path):
    config = {"model": {"item_quantizer": {"codebook_size": 4},
                        "user_quantizer": {"codebook_size": 16}}}  # fmt: skip
    run = make_run(tmp_path, config=config)
    users = np.array(["u1", "u2", "u3"])
    run.write_semantic_ids("users", users, np.array([[5, 0], [5, 1], [7, 0]]), {"max_suffix": 1})
    text = format_inspection(run, side="users")
    assert "level 0: 2/16 codes used (12.5%)" in text and "(config.yaml)" in text
    assert "2 of 3 users share their codes with another user" in text
    assert "stats.json agrees" in text
    assert block(text, "c0=5 (2 users)") == ["u1", "u2"]
    assert "level 0: 3/4 codes used" in format_inspection(run, side="items")


def test_inspect_items_shows_their_ids_and_the_items_sharing_a_prefix(tmp_path, capsys):
    """By hand from TABLE: "e" (Alien 3) is 0-1-2 and shares 0-1 with a and b, b seen most;
    at depth 1 it shares c0=0 with a, b and c; "f" (Fargo) shares nothing."""
    run = make_run(tmp_path, train_counts={"b": 3, "a": 1, "c": 2})
    assert main(["inspect", str(run.root), "--items", "e", "f"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Alien 3 (item e): semantic ID 0-1-2"
    assert out[1].strip() == "shares the prefix 0-1 with 2 other item(s), e.g.:"
    assert [line.strip() for line in out[2:4]] == ["Aliens", "Alien"]  # most seen first
    assert out[4] == "Fargo (item f): semantic ID 3-3-0"
    assert "with 0 other item(s)" in out[5] and len(out) == 6
    assert main(["inspect", str(run.root), "--items", "e", "--depth", "1"]) == 0
    shallow = capsys.readouterr().out.splitlines()
    assert "prefix 0 with 3 other" in shallow[1]
    assert [line.strip() for line in shallow[2:]] == ["Aliens", "Toy Story", "Alien"]
    assert main(["inspect", str(run.root), "--items", "zz"]) == 2
    assert "item 'zz' has no semantic ID" in capsys.readouterr().err
