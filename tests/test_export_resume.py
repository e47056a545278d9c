"""Partitioned, resumable export: interrupted runs resume to exactly the full output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.artifacts import RunFolder
from recsys.cli import main
from recsys.errors import RecsysError
from recsys.export import topk as export_mod
from recsys.export.topk import export_partitioned, export_recommendations

KW = {"split": "all", "k": 5, "chunk_users": 7, "progress": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    from test_index import tiny_run

    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory) -> pd.DataFrame:
    """The single-file export: what every partitioned export must add up to."""
    out = tmp_path_factory.mktemp("ref") / "recs.parquet"
    export_recommendations(run.root, out, **KW)
    return canonical(pd.read_parquet(out))


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["user_id", "rank"]).reset_index(drop=True)


def read_parts(out) -> pd.DataFrame:
    parts = sorted(out.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def test_partitioned_export_equals_single_file(run, reference, tmp_path):
    out = tmp_path / "recs"
    summary = export_partitioned(run.root, out, **KW)
    assert summary["parts"] == 6 and summary["written"] == 6 and summary["skipped"] == 0
    assert summary["users"] == 40 and summary["rows"] == len(reference) == 200
    assert summary["users_per_second"] > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "_SUCCESS",
        "_manifest.json",
        *[f"part-{n:05d}.parquet" for n in range(6)],
    ]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["k"] == 5 and manifest["chunk_users"] == 7 and manifest["split"] == "all"
    assert len(manifest["run_fingerprint"]) == 16 and len(manifest["users_sha256"]) == 64
    pd.testing.assert_frame_equal(canonical(read_parts(out)), reference)
    # Each part holds whole users: 7 of them (the last: 5), in user-index order.
    user_map = run.user_map()
    for n, path in enumerate(sorted(out.glob("part-*.parquet"))):
        users = user_map.to_index(pd.read_parquet(path).user_id.unique())
        assert sorted(users.tolist()) == list(range(7 * n, min(7 * n + 7, 40)))
    again = export_partitioned(run.root, out, **KW)  # complete: nothing to do
    assert again["written"] == 0 and again["skipped"] == 6 and again["rows"] == 200


def test_interrupted_export_resumes_without_duplicates_or_gaps(
    run, reference, tmp_path, monkeypatch
):
    out = tmp_path / "recs"
    real = export_mod._write_part
    calls = []

    def dies_after_two(table, path):
        if len(calls) == 2:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of the third chunk
        calls.append(path.name)
        real(table, path)

    monkeypatch.setattr(export_mod, "_write_part", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        export_partitioned(run.root, out, **KW)
    monkeypatch.setattr(export_mod, "_write_part", real)
    assert (
        sorted(p.name for p in out.glob("part-*"))
        == calls
        == [
            "part-00000.parquet",
            "part-00001.parquet",
        ]
    )
    assert not (out / "_SUCCESS").exists()
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    # A writer killed mid-part leaves a hidden temporary file: it is cleaned up, not read.
    (out / ".part-00002.parquet.abc123.tmp").write_bytes(b"half a parquet file")
    first = os.stat(out / "part-00000.parquet").st_mtime_ns

    summary = export_partitioned(run.root, out, **KW)
    assert summary["skipped"] == 2 and summary["written"] == 4 and summary["rows"] == 200
    assert os.stat(out / "part-00000.parquet").st_mtime_ns == first  # kept, not redone
    assert (out / "_SUCCESS").exists() and not list(out.glob(".*.tmp"))
    resumed = read_parts(out)
    assert not resumed.duplicated(["user_id", "rank"]).any()
    pd.testing.assert_frame_equal(canonical(resumed), reference)


def test_killed_export_process_resumes(run, reference, tmp_path):
    """A real SIGKILL (no cleanup code runs) after the first parts appear."""
    out = tmp_path / "recs"
    script = (
        "import sys, time\n"
        "from recsys.export import topk\n"
        "real = topk._write_part\n"
        "def slow(table, path):\n"
        "    real(table, path)\n"
        "    time.sleep(0.5)\n"
        "topk._write_part = slow\n"
        "from recsys.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["export", str(run.root), "--out", str(out), "--partitioned", "--no-progress"]
    args += ["--split", "all", "--k", "5", "--chunk-users", "7"]
    proc = subprocess.Popen([sys.executable, "-c", script, *args])
    try:
        deadline = time.monotonic() + 120
        while not (out / "part-00001.parquet").exists():
            assert proc.poll() is None, "the export ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = sorted(p.name for p in out.glob("part-*.parquet"))
    assert 2 <= len(done) < 6 and not (out / "_SUCCESS").exists()
    summary = export_partitioned(run.root, out, **KW)
    assert summary["skipped"] == len(done) and summary["written"] == 6 - len(done)
    pd.testing.assert_frame_equal(canonical(read_parts(out)), reference)


def test_rerun_with_other_parameters_is_refused(run, tmp_path, capsys):
    out = tmp_path / "recs"
    export_partitioned(run.root, out, **KW)
    for change, match in [
        ({"k": 6}, "k 5 there, 6 now"),
        ({"chunk_users": 8}, "chunk_users 7 there, 8 now"),
        ({"split": "test"}, "split 'all' there, 'test' now"),
        ({"user_ids": ["u1", "u2"]}, "users_sha256"),
    ]:
        with pytest.raises(RecsysError, match=match):
            export_partitioned(run.root, out, **{**KW, **change})
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["run_fingerprint"] = "0" * 16  # as if the run had been retrained since
    (out / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecsysError, match="run_fingerprint"):
        export_partitioned(run.root, out, **KW)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "part-00000.parquet").write_bytes(b"")
    with pytest.raises(RecsysError, match="no _manifest.json"):
        export_partitioned(run.root, stray, **KW)
    # The CLI: JSON summary, and the refusal as a clean error (exit 2).
    cli = ["export", str(run.root), "--split", "all", "--k", "3", "--partitioned"]
    assert main([*cli, "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == pq.read_table(tmp_path / "cli").num_rows == 120
    assert main([*cli, "--out", str(out), "--no-progress"]) == 2
    assert "holds another export" in capsys.readouterr().err


def test_shards_write_disjoint_parts_and_verify_finds_every_user_once(
    run, reference, tmp_path, monkeypatch, capsys
):
    """Two shards into one folder; the second killed after one part and resumed; verify
    then finds every user exactly once with k rows (and fails on a tampered export)."""
    from recsys.export.topk import verify_partitioned

    out = tmp_path / "recs"
    first = export_partitioned(run.root, out, **KW, shard=(0, 2))
    assert first["written"] == 3 and not first["complete"] and not (out / "_SUCCESS").exists()
    written = sorted(p.name for p in out.glob("part-*"))
    assert written == [f"part-{n:05d}.parquet" for n in (0, 2, 4)]
    assert verify_partitioned(run.root, out)["problems"] == ["part-00001.parquet missing",
        "part-00003.parquet missing", "part-00005.parquet missing", "19 user(s) missing, e.g. "
        + repr(sorted(set(reference.user_id) - set(read_parts(out).user_id))[0])]  # fmt: skip

    real, calls = export_mod._write_part, []

    def dies_after_one(table, path):
        if calls:
            raise KeyboardInterrupt  # the second shard's process dies in its second part
        calls.append(path.name)
        real(table, path)

    # another shard's writer is mid-part: its temporary file is not this shard's to delete
    (out / ".part-00002.parquet.zzz.tmp").write_bytes(b"being written")
    monkeypatch.setattr(export_mod, "_write_part", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        export_partitioned(run.root, out, **KW, shard=(1, 2))
    monkeypatch.setattr(export_mod, "_write_part", real)
    assert calls == ["part-00001.parquet"] and (out / ".part-00002.parquet.zzz.tmp").exists()
    second = export_partitioned(run.root, out, **KW, shard=(1, 2))
    assert second["skipped"] == 1 and second["written"] == 2 and second["complete"]
    result = verify_partitioned(run.root, out)
    assert result["problems"] == [] and result["users"] == 40 and result["rows"] == 200
    pd.testing.assert_frame_equal(canonical(read_parts(out)), reference)
    assert main(["export", str(run.root), "--out", str(out), "--verify"]) in (0, None)

    # a user duplicated into another part and a rank missing: both named
    part = pd.read_parquet(out / "part-00000.parquet")
    pd.concat([part, part.head(1)]).to_parquet(out / "part-00000.parquet", index=False)
    bad = pd.read_parquet(out / "part-00003.parquet")
    bad[bad["rank"] != 2].to_parquet(out / "part-00003.parquet", index=False)
    problems = verify_partitioned(run.root, out)["problems"]
    assert any("ranks" in p and "part-00000" in p for p in problems)
    assert any("ranks" in p and "part-00003" in p for p in problems)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run.root), "--out", str(out), "--verify"])
    assert exit_info.value.code == 1
