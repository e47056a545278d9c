"""Where a training run's memory peaks: the peak resident size of each phase of
``recsys train`` (loading, the model's build, the fit, the final embeddings, the history
switch, the run folder's files, the evaluation), as JSON.

    python bench/memory_phases.py --steps 20 -- -c CONFIG [key=value ...] --fresh

Runs ``recsys train`` in this process with every epoch cut to ``--steps`` training batches
(Lightning's ``limit_train_batches``; the phases after the fit do not depend on how long it
trained), and resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) as each phase
starts, so each phase's ``peak_gb`` is exactly the most it held (Linux only). ``rss_gb``:
resident at its start.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# the runner's steps, in the order a run takes them
RUNNER_PHASES = ("load_dataset", "item_features", "build_model", "fit", "_free_training_state",
                 "frozen_embeddings", "refit", "write_item_encoder", "write_history_query",
                 "evaluate_embeddings")  # fmt: skip
FOLDER_PHASES = ("write_data", "write_embeddings", "write_semantic_ids", "write_metrics")
MODEL_PHASES = ("use_history", "semantic_ids")


def _memory_gb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 2**20  # kB → GB
    return fields


class PhaseLog:
    """Each wrapped call's seconds, resident size at its start and peak inside it. Calls
    inside a logged call count toward it and are not logged themselves."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: list[dict] = []
        self.depth = 0

    def wrap(self, owner, name: str, label: str | None = None) -> None:
        function = getattr(owner, name)

        @functools.wraps(function)
        def logged(*args, **kwargs):
            if self.depth:
                return function(*args, **kwargs)
            Path("/proc/self/clear_refs").write_text("5")  # peak mark := resident now
            rss, begun = _memory_gb()["VmRSS"], time.perf_counter()
            self.depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1
                self.phases.append({
                    "phase": label or name, "start_s": round(begun - self.start, 1),
                    "seconds": round(time.perf_counter() - begun, 1),
                    "rss_gb": round(rss, 2), "peak_gb": round(_memory_gb()["VmHWM"], 2),
                })  # fmt: skip

        setattr(owner, name, logged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training batches an epoch")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: recsys train's")
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args

    import recsys.train.fit as fit
    import recsys.train.runner as runner
    from recsys.artifacts import RunFolder
    from recsys.cli import main as recsys_main

    log = PhaseLog()
    trainer = fit.lightning_trainer

    def short_epochs(*a, **k):
        return trainer(*a, **k, limit_train_batches=args.steps)

    fit.lightning_trainer = short_epochs
    for name in RUNNER_PHASES:
        log.wrap(runner, name)
    for name in FOLDER_PHASES:
        log.wrap(RunFolder, name)
    build = runner.build_model

    def build_and_wrap(*a, **k):
        model = build(*a, **k)
        for name in MODEL_PHASES:
            log.wrap(model, name)  # on the instance: each model class has its own
        return model

    runner.build_model = build_and_wrap
    with contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON only
        code = recsys_main(["train", *train_args])
    print(json.dumps({
        "train_args": train_args, "steps_per_epoch": args.steps, "exit_code": code,
        "peak_gb": max((p["peak_gb"] for p in log.phases), default=None), "phases": log.phases,
    }, indent=2))  # fmt: skip
    sys.exit(code)


if __name__ == "__main__":
    main()
