#!/usr/bin/env python
"""Tabulate finished run folders into a section of the research history (docs/research/).

    python bench/runs_table.py --section lightgcn --title "LightGCN vs peers" runs/a runs/b

prints the table as JSON rows and replaces (or appends) the block between
``<!-- BEGIN lightgcn -->`` and ``<!-- END lightgcn -->`` in the file of docs/research/
that holds that marker (``--doc FILE`` names the file, and must for a new section).  Every
row carries the command recorded in the run's manifest, its epochs (best), the wall time
of training and the machine's thread setting.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from recsys.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESEARCH = ROOT / "docs" / "research"
COLUMNS = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr", "coverage@20"]


def row(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    training = metrics.get("training", {})
    command = manifest.get("command", "")
    command = re.sub(r"^\S*recsys ", "recsys ", command)
    return {
        "run": run.name,
        "dataset": metrics["dataset"],
        "split": metrics["split"],
        "model": metrics["model"],
        **{c: metrics["test"].get(c) for c in COLUMNS},
        "n_users": metrics["test"].get("n_users"),
        "epochs": training.get("epochs", 0),
        "best_epoch": training.get("best_epoch"),
        "train_s": training.get("train_seconds", 0.0),
        "s_to_best": training.get("seconds_to_best"),
        "refit": training.get("refit"),  # trainer.refit: epochs and seconds of the refit
        "command": command,
        "git": manifest.get("git_commit"),
    }


def markdown(title: str, rows: list[dict]) -> str:
    head = ["run", "dataset", "split", "model", *COLUMNS, "epochs (best)", "train s", "s to best"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['run']}`", r["dataset"], r["split"], r["model"]]
        cells += [f"{r[c]:.4f}" if r[c] is not None else "" for c in COLUMNS]
        best = f" ({r['best_epoch']})" if r["best_epoch"] else ""
        epochs, seconds = f"{r['epochs']}{best}", f"{r['train_s']:.0f}"
        if r.get("refit"):  # test scored by the model retrained on train + valid
            epochs += f" + refit {r['refit']['epochs']}"
            seconds += f" + {r['refit']['train_seconds']:.0f}"
        cells += [epochs, seconds, f"{r['s_to_best'] or ''}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Commands (`runs/<name>` is the run folder; `trainer.num_threads=1`):", ""]
    lines += [f"- `{r['run']}`: `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def update(doc: Path, section: str, body: str) -> None:
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(doc, text)  # a crash leaves the doc as it was


def doc_for(section: str, folder: Path = RESEARCH) -> Path:
    """The one file under ``folder`` that holds ``section``'s BEGIN marker."""
    begin = f"<!-- BEGIN {section} -->"
    hits = [p for p in sorted(folder.glob("*.md")) if begin in p.read_text()]
    if len(hits) == 1:
        return hits[0]
    where = ", ".join(str(p) for p in hits) if hits else "no file"
    raise SystemExit(
        f"section {section!r}: {where} under {folder} holds it; name the file with --doc"
    )


def section_arguments(description: str | None) -> argparse.Namespace:
    """``runs...``, ``--section``, ``--title``, ``--doc``: what a table-writing script takes."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--section", required=True)
    ap.add_argument("--title", required=True)
    ap.add_argument("--doc", type=Path, help="default: the docs/research/ file holding the section")
    args = ap.parse_args()
    if args.doc is None:
        args.doc = doc_for(args.section)
    return args


def publish(items: list[dict], doc: Path, section: str, body: str) -> None:
    """Print ``items`` as JSON and write ``body`` as the section of ``doc``."""
    json.dump(items, sys.stdout, indent=2)
    print()
    update(doc, section, body)


def main() -> int:
    args = section_arguments(__doc__)
    rows = [row(r) for r in args.runs]
    publish(rows, args.doc, args.section, markdown(args.title, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
