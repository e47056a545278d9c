"""The ``recsys`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.errors import RecsysError

if TYPE_CHECKING:
    from recsys.artifacts import RunFolder


def _train(args: argparse.Namespace) -> None:
    from recsys.train.config import load_run_config
    from recsys.train.distributed import is_leader
    from recsys.train.runner import train_run

    config = load_run_config(args.config, args.overrides)
    if args.no_progress:
        config.trainer.progress_bar = False
    run = train_run(config, fresh=args.fresh, skip_finished=args.skip_finished)
    if is_leader():  # a ddp run's other processes leave the run folder to the first
        _print_run(run, brief=args.brief)


def _tune(args: argparse.Namespace) -> None:
    from recsys.train.tune import run_tune, summary

    study, best = run_tune(
        args.config, args.overrides, n_trials=args.n_trials, progress=not args.no_progress
    )
    table = summary(study, study.user_attrs["metric"]).fillna("")
    print("| " + " | ".join(map(str, table.columns)) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + " |")
    print(f"best: trial {study.best_trial.number}, valid {study.best_value:.6f}")
    print(f"best config: {best}  (recsys train -c {best} retrains it)")


def _print_run(run: RunFolder, brief: bool = False) -> None:
    """A finished run's folder, training summary and test metrics (``brief``: one line)."""
    metrics = run.metrics()
    if brief:
        t, test = metrics.get("training") or {}, metrics.get("test") or {}
        print(
            f"{run.root}: best epoch {t.get('best_epoch')} of {t.get('epochs')},"
            f" {t.get('train_seconds')} s; test NDCG@10 {test.get('ndcg@10', float('nan')):.4f},"
            f" Recall@20 {test.get('recall@20', float('nan')):.4f}"
        )
        return
    print(f"run folder: {run.root}")
    print(json.dumps({"training": metrics.get("training"), "test": metrics.get("test")}, indent=2))


def _refit(args: argparse.Namespace) -> None:
    from recsys.train.runner import refit_run

    progress = False if args.no_progress else None
    _print_run(refit_run(Path(args.run), args.name, fresh=args.fresh, progress_bar=progress))


def _data(args: argparse.Namespace) -> None:
    import numpy as np

    from recsys.config import apply_overrides, load_yaml, validate
    from recsys.data.dataset import DataConfig, load_dataset

    raw = apply_overrides(load_yaml(args.config) if args.config else {}, args.overrides)
    config = validate(
        DataConfig, raw.get("data", {}), source=str(args.config or "config"), prefix="data."
    )
    ds = load_dataset(config)
    counts = np.bincount(ds.labels, minlength=3)
    summary = {
        "dataset": ds.name,
        "split": ds.protocol,
        "users": ds.n_users,
        "items": ds.n_items,
        "train": int(counts[0]),
        "valid": int(counts[1]),
        "test": int(counts[2]),
        "fingerprint": ds.fingerprint,
    }
    print(json.dumps(summary, indent=2))


def _evaluate(args: argparse.Namespace) -> None:
    from recsys.artifacts import RunFolder
    from recsys.eval.bundle import evaluate_run, metrics_table

    rows = []
    for path in args.runs:
        run = RunFolder(Path(path))
        run.manifest()
        rows.append((run.root.name, evaluate_run(run, args.split, tuple(args.ks))))
    if args.json:
        print(json.dumps(dict(rows), indent=2))
    else:
        print(metrics_table(rows))


def _table(args: argparse.Namespace) -> None:
    from recsys.artifacts import RunFolder
    from recsys.eval.bundle import metrics_table

    rows = []
    for path in args.runs:
        run = RunFolder(Path(path))
        metrics = run.metrics()
        if args.split not in metrics:
            raise RecsysError(f"{run.metrics_path}: no {args.split!r} metrics (unfinished run?)")
        rows.append((run.root.name, metrics[args.split]))
    print(metrics_table(rows))


def _export(args: argparse.Namespace) -> None:
    from recsys.export.topk import export_recommendations

    users = None
    if args.users:
        users = [line.strip() for line in Path(args.users).read_text().splitlines() if line.strip()]
    common = dict(
        split=args.split,
        k=args.k,
        user_ids=users,
        chunk_users=args.chunk_users,
        progress=not args.no_progress,
        index=args.index,
    )
    if args.verify:
        from recsys.export.topk import verify_partitioned

        result = verify_partitioned(args.run, args.out)
        print(json.dumps(result, indent=2))
        if result["problems"]:
            raise SystemExit(1)
        return
    if args.partitioned or args.shard:
        from recsys.export.topk import export_partitioned

        shard = _shard(args.shard) if args.shard else (0, 1)
        print(json.dumps(export_partitioned(args.run, args.out, **common, shard=shard), indent=2))
        return
    n = export_recommendations(args.run, args.out, **common)
    print(f"wrote {n} rows to {args.out}")


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise RecsysError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(index), int(count)


def _semantic_ids(args: argparse.Namespace) -> None:
    from recsys.artifacts import RunFolder
    from recsys.report.inspect import export_semantic_ids

    text = export_semantic_ids(RunFolder(Path(args.run)), args.out, side=args.side)
    sys.stdout.write(text if args.out is None else text + "\n")


def _inspect(args: argparse.Namespace) -> None:
    from recsys.artifacts import RunFolder
    from recsys.report.inspect import format_inspection, format_item_neighbours

    run = RunFolder(Path(args.run))
    if args.items:
        print(format_item_neighbours(run, args.items, depth=args.depth))
        return
    print(format_inspection(run, side=args.side, examples=args.examples))


def _report(args: argparse.Namespace) -> None:
    from recsys.report.build import build_report

    out = build_report(
        args.runs,
        args.out,
        max_points=args.max_points,
        tsne=args.tsne,
        n_users=args.example_users,
        k=args.k,
        seed=args.seed,
    )
    print(f"wrote {out}")


def _index(args: argparse.Namespace) -> None:
    import faiss
    import torch

    from recsys.artifacts import RunFolder
    from recsys.config import apply_overrides, validate
    from recsys.index.run_index import IndexConfig, build_for_run

    base = {"kind": "factory", "factory": args.factory} if args.factory else {"kind": args.kind}
    if args.name:
        base["name"] = args.name
    config = validate(IndexConfig, apply_overrides(base, args.params), source="index")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    run = RunFolder(Path(args.run))
    index = build_for_run(run, config)
    meta = index.meta
    out = {
        "run": str(run.root),
        "name": meta.name,
        "kind": meta.kind,
        "factory": meta.factory,
        "mips_to_l2": meta.mips_to_l2,
        "params": meta.params,
        "calibration": meta.calibration,
        "n_items": meta.n_items,
        "dim": meta.dim,
        "build_seconds": meta.build_seconds,
        "index_bytes": meta.index_bytes,
    }
    if not args.no_save:
        out["path"] = str(index.save(run))
    if args.eval:
        from recsys.index.evaluate import evaluate_index

        users, _ = run.embeddings()
        out.update(
            evaluate_index(
                index, users, k=10, max_queries=args.eval_users, single_queries=args.single_queries
            )
        )
    print(json.dumps(out, indent=2))


def _serve(args: argparse.Namespace) -> None:
    import os
    import tempfile

    import uvicorn

    from recsys.artifacts import RunFolder
    from recsys.config import apply_overrides, validate
    from recsys.serve.app import CONFIG_ENV, RUN_ENV, create_app, limit_blas_threads
    from recsys.serve.config import ServeConfig

    base = {"index": args.index, "max_k": args.max_k, "search_threads": args.search_threads}
    if args.adds_journal == "none":
        base["adds_journal"] = None
    elif args.adds_journal:
        base["adds_journal"] = str(Path(args.adds_journal).resolve())
    if args.image_root:
        base["image_root"] = str(Path(args.image_root).resolve())
    config = validate(ServeConfig, apply_overrides(base, args.settings), source="serve")
    run_dir = Path(args.run).resolve()
    RunFolder(run_dir).manifest()  # fail now on a folder that is not a finished run
    if args.workers > 1:
        if config.adds_journal is None:
            print(
                "warning: with several workers and --adds-journal none, an added item lives"
                " in the worker that received it only",
                file=sys.stderr,
            )
        os.environ[RUN_ENV] = str(run_dir)
        os.environ[CONFIG_ENV] = config.model_dump_json()
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsys-prom-"))
        uvicorn.run(
            "recsys.serve.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
        )
        return
    limit_blas_threads(config)
    app = create_app(run_dir, config, background=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def _add_set_option(p: argparse.ArgumentParser, dest: str, help: str) -> None:
    """A repeatable ``--set KEY=VALUE`` (dotted keys, YAML values) collected into ``dest``."""
    p.add_argument(
        "--set", dest=dest, action="append", default=[], metavar="KEY=VALUE",
        help=help + " (repeatable)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", help="YAML config, e.g. configs/lightgcn.yaml")
        p.add_argument(
            "overrides", nargs="*", help="dotted overrides: model.dim=128 trainer.max_epochs=5"
        )

    p = sub.add_parser("train", help="train a model into runs/<name>/ (resumes an interrupted run)")
    with_config(p)
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--fresh", action="store_true", help="discard an existing run folder of that name"
    )
    start.add_argument(
        "--skip-finished",
        action="store_true",
        help="leave a run that already finished with this config on this data as it is",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--brief", action="store_true", help="one summary line, not the metrics")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "tune", help="search the config's tune: section with Optuna (resumable; never reads test)"
    )
    with_config(p)
    p.add_argument("--n-trials", type=int, help="the study's total trials (default: tune.n_trials)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_tune)

    p = sub.add_parser(
        "refit",
        help="retrain a finished run's selected model on train + valid into runs/<name>/"
        " (its first phase copied, not rerun; resumes an interrupted refit)",
    )
    p.add_argument("run", help="a finished run folder trained with trainer.refit: false")
    p.add_argument("--name", required=True, help="the new run's name, a sibling folder")
    p.add_argument("--fresh", action="store_true", help="discard an existing folder of that name")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_refit)

    p = sub.add_parser("data", help="read, validate and split a dataset; print its counts")
    with_config(p)
    p.set_defaults(func=_data)

    p = sub.add_parser("evaluate", help="full-ranking metrics of run folders from their embeddings")
    p.add_argument("runs", nargs="+")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("table", help="metrics.json of run folders side by side (Markdown)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.set_defaults(func=_table)

    p = sub.add_parser(
        "export", help="top-K per user to Parquet/CSV (user_id, item_id, rank, score)"
    )
    p.add_argument("run")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "valid", "all"],
        help="test/valid: the users scored on that split, masking what precedes it;"
        " all: every user, masking everything seen",
    )
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--out", required=True)
    p.add_argument("--users", help="file with one user id per line (default: see --split)")
    p.add_argument("--chunk-users", type=int, default=4096)
    p.add_argument(
        "--index",
        help="a saved index of the run (recsys index RUN --kind K; the name under RUN/index/)"
        " that answers instead of exact scoring: for catalogues too large to score every"
        " item for every user",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--partitioned",
        action="store_true",
        help="--out is a folder of part-NNNNN.parquet files (one per user chunk); resumable",
    )
    p.add_argument(
        "--shard",
        help="I/N: write only every N-th part from part I (implies --partitioned), so that N"
        " processes or machines export disjoint users into the same --out at once",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the partitioned export in --out: every user once, ranks 1..k; exit 1 if not",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "semantic-ids", help="a run's semantic-ID table (id, c0.., suffix, semantic_id)"
    )
    p.add_argument("run")
    p.add_argument("--side", default="items", choices=["items", "users"])
    p.add_argument("--out", help="FILE.parquet or FILE.csv (default: CSV on stdout)")
    p.set_defaults(func=_semantic_ids)

    p = sub.add_parser(
        "inspect", help="semantic-ID utilisation, collisions and items sharing a prefix"
    )
    p.add_argument("run")
    p.add_argument("--side", default="items", choices=["items", "users"])
    p.add_argument("--examples", type=int, default=5, help="prefixes shown per level")
    p.add_argument(
        "--items", nargs="+", metavar="ID", help="these items' IDs and the items sharing a prefix"
    )
    p.add_argument("--depth", type=int, default=2, help="prefix length for --items")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("report", help="one self-contained HTML report of run folders")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True, help="report.html")
    p.add_argument("--max-points", type=int, default=5000, help="items in the 2-D projection")
    p.add_argument("--tsne", action="store_true", help="add a t-SNE projection (slower)")
    p.add_argument("--example-users", type=int, default=3, help="example users per run")
    p.add_argument("--k", type=int, default=10, help="recommendations per example user")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "index", help="build a FAISS index over a run's items into RUN/index/ (and evaluate it)"
    )
    p.add_argument("run")
    p.add_argument("--kind", default="hnsw", choices=["flat", "ivf", "hnsw", "ivfpq"])
    p.add_argument("--factory", help="a raw FAISS factory string instead of --kind")
    p.add_argument("--name", help="file name under RUN/index/ (default: the kind)")
    _add_set_option(p, "params", "an index setting: --set nprobe=32 --set ef_search=256")
    p.add_argument("--eval", action="store_true", help="recall@10 vs exact search, QPS")
    p.add_argument("--eval-users", type=int, default=5000, help="query users sampled")
    p.add_argument("--single-queries", type=int, default=1000, help="timed one at a time")
    p.add_argument("--threads", type=int, help="FAISS / torch threads (default: all cores)")
    p.add_argument("--no-save", action="store_true")
    p.set_defaults(func=_index)

    p = sub.add_parser("serve", help="HTTP API over a run (recommendations, similar, adds)")
    p.add_argument("run")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--index",
        default="auto",
        help="RUN/index/<name>.faiss, or a kind to build; auto: flat up to 50k items, else hnsw",
    )
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-k", type=int, default=100)
    p.add_argument("--search-threads", type=int, default=1, help="FAISS threads per search")
    p.add_argument(
        "--adds-journal",
        help="file that persists added items, shared by workers (default:"
        " RUN/serving/added_items.jsonl; none: in memory only, lost on restart)",
    )
    p.add_argument("--image-root", help="folder that new items' image paths must lie under")
    p.add_argument("--log-level", default="info")
    _add_set_option(p, "settings", "any ServeConfig setting: --set semantic.enabled=false")
    p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
