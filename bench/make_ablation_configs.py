#!/usr/bin/env python
"""Write configs/ablations/das*.yaml from configs/das.yaml, one per ablation.

    python bench/make_ablation_configs.py          # rewrite the files
    python bench/make_ablation_configs.py --check  # exit 1 if any is out of date

Each ablation is configs/das.yaml plus the overrides in ABLATIONS, so that the table
compares the current model with itself minus one part (tests run ``--check``).
``configs/ablations/two-stage.yaml`` is written by hand: it is another model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.config import apply_overrides, load_yaml  # noqa: E402

ABLATIONS: dict[str, list[str]] = {
    "das": [],
    "das-no-align": [
        "model.weights.align_dual=0",
        "model.weights.align_self=0",
        "model.weights.cooc=0",
    ],
    "das-no-cooc": ["model.weights.cooc=0"],
    "das-no-debias": [
        "model.pop_dim=0",
        "model.weights.debias_pop=0",
        "model.weights.debias_orth=0",
    ],
    "das-no-dual": ["model.dual=false"],
}


def render(name: str, overrides: list[str]) -> str:
    raw = apply_overrides(load_yaml(ROOT / "configs" / "das.yaml"), overrides)
    raw["name"] = f"{name}-{raw['data']['dataset']}"
    what = " ".join(overrides) if overrides else "(no change)"
    header = (
        f"# DAS ablation '{name}': configs/das.yaml with {what}\n"
        "# Written by bench/make_ablation_configs.py; edit configs/das.yaml instead.\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for name, overrides in ABLATIONS.items():
        path = ROOT / "configs" / "ablations" / f"{name}.yaml"
        text = render(name, overrides)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run bench/make_ablation_configs.py):", *stale, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
