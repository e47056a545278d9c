#!/usr/bin/env python
"""Mean ± standard deviation over seeds of finished run folders, as a section of the
research history (the file of docs/research/ holding it, or ``--doc FILE``).

    python bench/seeds_table.py --section seeds-ml-100k-loo --title "..." runs/a runs/a-seed1 ...

Runs are grouped by their saved ``config.yaml`` (validated, defaults filled in) with
``name``, ``seed``, ``output_dir`` and the progress bar left out, so a
group is one configuration trained under several seeds (a folder whose config differs in
anything else lands in a group of its own: nothing is averaged by accident). Each group's
row gives the seeds, valid NDCG@10 and test metrics as mean ± sample standard deviation
(ddof 1), the best epochs and the mean training seconds; the per-run values and commands
follow. Prints the groups as JSON.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs_table import publish, section_arguments  # noqa: E402

from recsys.train.config import parse_run_config  # noqa: E402

TEST_COLUMNS = ["recall@10", "ndcg@10", "recall@20", "ndcg@20"]


def run_record(run: Path) -> dict:
    """One finished run: its seed, the config key that groups it, and its metrics."""
    # validated, so that configs saved before a field existed compare equal to newer ones
    config = parse_run_config(yaml.safe_load((run / "config.yaml").read_text())).dump()
    metrics = json.loads((run / "metrics.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    seed = config.pop("seed")
    for field in ("name", "output_dir"):  # neither changes what is trained
        config.pop(field)
    config["trainer"].pop("progress_bar")
    training = metrics.get("training", {})
    return {
        "run": run.name,
        "seed": seed,
        "key": json.dumps(config, sort_keys=True),
        "model": metrics["model"],
        "dataset": metrics["dataset"],
        "split": metrics["split"],
        "valid_ndcg@10": metrics["valid"]["ndcg@10"],
        **{c: metrics["test"][c] for c in TEST_COLUMNS},
        "best_epoch": training.get("best_epoch"),
        "train_s": training.get("train_seconds", 0.0),
        "refit": bool(training.get("refit")),
        "command": re.sub(r"^\S*recsys ", "recsys ", manifest.get("command", "")),
    }


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def group_runs(records: list[dict]) -> list[dict]:
    """Groups of equal configs (order of first appearance), each with its statistics."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["key"], []).append(record)
    out = []
    for members in groups.values():
        seeds = [m["seed"] for m in members]
        if len(set(seeds)) != len(seeds):
            runs = ", ".join(m["run"] for m in members)
            raise ValueError(f"the same config and seed twice among {runs}: pass each run once")
        label = re.sub(r"-seed\d+$", "", members[0]["run"])
        stats = {
            column: mean_std([m[column] for m in members])
            for column in ["valid_ndcg@10", *TEST_COLUMNS]
        }
        out.append(
            {
                "label": label,
                "model": members[0]["model"],
                "seeds": seeds,
                "stats": stats,
                "best_epochs": [m["best_epoch"] for m in members],
                "train_s": statistics.fmean(m["train_s"] for m in members),
                "refit": members[0]["refit"],
                "runs": [{k: v for k, v in m.items() if k != "key"} for m in members],
            }
        )
    return out


def _cell(stat: tuple[float, float | None]) -> str:
    mean, std = stat
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def markdown(title: str, groups: list[dict]) -> str:
    head = ["config", "model", "seeds", "valid N@10", "R@10", "N@10", "R@20", "N@20"]
    head += ["best epochs", "train s (mean)"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [f"`{g['label']}`", g["model"], ", ".join(map(str, g["seeds"]))]
        cells += [_cell(g["stats"][c]) for c in ["valid_ndcg@10", *TEST_COLUMNS]]
        cells += [", ".join(map(str, g["best_epochs"])), f"{g['train_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± sample standard deviation over seeds (the top-level `seed`: initialisation and"
        " sampling; the quantizers' own k-means seeds are part of the config). Test"
        + (" after refit" if any(g["refit"] for g in groups) else " of the selected checkpoint")
        + "; valid is the selected epoch's.",
        "",
        "Runs (`runs/<name>`):",
        "",
    ]
    for g in groups:
        for r in g["runs"]:
            values = " / ".join(f"{r[c]:.4f}" for c in ["valid_ndcg@10", *TEST_COLUMNS])
            lines.append(
                f"- `{r['run']}` (seed {r['seed']}, best epoch {r['best_epoch']}):"
                f" {values}; `{r['command']}`"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    args = section_arguments(__doc__)
    groups = group_runs([run_record(r) for r in args.runs])
    publish(groups, args.doc, args.section, markdown(args.title, groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
