"""The ``recsys`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recsys.errors import RecsysError


def _train(args: argparse.Namespace) -> None:
    from recsys.train.config import load_run_config
    from recsys.train.runner import train_run

    config = load_run_config(args.config, args.overrides)
    if args.no_progress:
        config.trainer.progress_bar = False
    run = train_run(config, fresh=args.fresh)
    metrics = run.metrics()
    print(f"run folder: {run.root}")
    print(json.dumps({"training": metrics.get("training"), "test": metrics.get("test")}, indent=2))


def _data(args: argparse.Namespace) -> None:
    import numpy as np

    from recsys.config import load_config
    from recsys.data.dataset import DataConfig, load_dataset

    config = load_config(_Section(DataConfig), args.config, args.overrides).data
    ds = load_dataset(config)
    counts = np.bincount(ds.labels, minlength=3)
    print(
        json.dumps(
            {
                "dataset": ds.name,
                "split": ds.protocol,
                "users": ds.n_users,
                "items": ds.n_items,
                "train": int(counts[0]),
                "valid": int(counts[1]),
                "test": int(counts[2]),
                "fingerprint": ds.fingerprint,
            },
            indent=2,
        )
    )


def _Section(data_cls):  # noqa: N802 - a tiny config holding just the data section
    from typing import Any

    from pydantic import create_model

    from recsys.config import StrictModel

    return create_model(
        "DataOnly",
        __base__=StrictModel,
        data=(data_cls, ...),
        **{k: (Any, None) for k in ("name", "seed", "output_dir", "model", "trainer", "eval")},
    )


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
    n = export_recommendations(
        args.run,
        args.out,
        split=args.split,
        k=args.k,
        user_ids=users,
        chunk_users=args.chunk_users,
        progress=not args.no_progress,
    )
    print(f"wrote {n} rows to {args.out}")


def _semantic_ids(args: argparse.Namespace) -> None:
    from recsys.artifacts import RunFolder
    from recsys.report.inspect import export_semantic_ids

    text = export_semantic_ids(RunFolder(Path(args.run)), args.out, side=args.side)
    sys.stdout.write(text if args.out is None else text + "\n")


def _inspect(args: argparse.Namespace) -> None:
    from recsys.artifacts import RunFolder
    from recsys.report.inspect import format_inspection

    print(format_inspection(RunFolder(Path(args.run)), side=args.side, examples=args.examples))


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
    p.add_argument(
        "--fresh", action="store_true", help="discard an existing run folder of that name"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

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
    p.add_argument("--no-progress", action="store_true")
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
