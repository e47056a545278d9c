"""How the pipeline scales: synthetic logs of 10k / 100k / 1M items, trained, indexed,
exported and served, each stage its own process (its peak RSS its own).

    python bench/scale.py --items 10000,100000,1000000 --out /tmp/scale > scale.json
    python bench/scale.py --table scale.json   # the Markdown table of docs/BENCHMARKS.md

For each size (``bench/synthetic.py``: as many users as items, 10 interactions per item,
power-law popularity and activity, content that follows the interactions):

* trains LightGCN and DAS for ``--epochs`` epochs (their default configs with the data
  section pointed at the synthetic tables, no early stopping, no refit, one thread):
  sampled propagation always (``configs/{lightgcn,das}_sampled.yaml``), whole-graph too up
  to ``--full-max`` items. Reports seconds per epoch (the last), the validation's seconds
  (ranking ``--eval-users`` sampled users: ``eval.max_users``), the final embeddings'
  seconds and the process's peak RSS;
* on the sampled LightGCN run: builds the serving index (``recsys index --kind
  --index-kind``: exact ``flat`` up to 50k items, else ``hnsw``), exports top-``--k`` for
  every user (``recsys export --split all --partitioned``, through that index above 50k
  items) and reports users/s and peak RSS, then serves the run (``recsys serve``, one
  worker) and loads it with ``bench/load_api.py`` at 32 concurrent clients: p99 ms;
* with ``--ddp SIZE``: training samples/s of each sampled model with ``devices: 2``
  (ddp_spawn, one thread each) against ``devices: 1`` (``bench/ddp_speed.py``,
  ``--ddp-rounds`` interleaved rounds of ``--ddp-epochs``), with dense updates (up to
  100k items they are faster than sparse ones, in one process and in two:
  ``docs/research/28-issue-30-scale.md``, fifth part).

Prints one JSON object; ``--table`` turns it into Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from speed import run_measured  # noqa: E402
from synthetic import SyntheticSpec, content_columns, write  # noqa: E402

from recsys.config import load_yaml  # noqa: E402
from recsys.index.faiss_index import AUTO_EXACT_ITEMS  # noqa: E402  (serve's `--index auto` rule)

CONFIGS = {  # (model, sampled) -> its default config
    ("lightgcn", True): "configs/lightgcn_sampled.yaml",
    ("lightgcn", False): "configs/lightgcn.yaml",
    ("das", True): "configs/das_sampled.yaml",
    ("das", False): "configs/das.yaml",
}


def run_config(model: str, sampled: bool, data: Path, out: Path, args, name: str) -> Path:
    """A config file for one training on the synthetic tables: the default config with its
    data and features sections replaced, no early stopping or refit."""
    raw = load_yaml(REPO / CONFIGS[model, sampled])
    spec = json.loads((data / "spec.json").read_text())["spec"]
    raw.update(
        name=name,
        output_dir=str(out / "runs"),
        data={
            "dataset": "table",
            "split": "loo",
            "interactions": {"path": str(data / "interactions.parquet")},
            "items": {"path": str(data / "items.parquet")},
        },
        features={"tabular": {"numeric": content_columns(spec["dim"])}},
        eval={"max_users": args.eval_users},
    )
    raw["trainer"].update(
        max_epochs=args.epochs,
        min_steps=None,
        patience=args.epochs,
        patience_steps=None,
        check_val_every_n_epoch=args.epochs,
        refit=False,
        num_threads=1,
        progress_bar=False,
    )
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def measured(cmd: list[str], env: dict[str, str]) -> dict:
    start = time.perf_counter()
    code, rss, out = run_measured(cmd, env)
    result = {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(rss, 1)}
    if code != 0:
        result["error"] = f"exit {code}: {' '.join(cmd[2:6])}"
    return result


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsys.cli", *args]


def train(config: Path, env: dict[str, str]) -> dict:
    result = measured(cli("train", "-c", str(config), "--fresh", "--no-progress", "--brief"), env)
    if "error" in result:
        return result
    raw = yaml.safe_load(config.read_text())
    run = Path(raw["output_dir"]) / raw["name"]
    metrics = json.loads((run / "metrics.json").read_text())
    training = metrics["training"]
    return {
        "run": str(run),
        "epoch_seconds": training["epoch_seconds"],
        "seconds_per_epoch": training["epoch_seconds"][-1],
        "valid_seconds": training["valid_seconds"],
        "embedding_seconds": training.get("embedding_seconds"),
        "valid_ndcg@10": metrics["valid"]["ndcg@10"],
        "valid_users": metrics["valid"]["n_users"],
        "process_seconds": result["seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
    }


def serving(run: Path, n_items: int, args, env: dict[str, str]) -> dict:
    """Index build, export of every user and the API's p99 on one trained run."""
    kind = "flat" if n_items <= AUTO_EXACT_ITEMS else args.index_kind
    out: dict = {"index_kind": kind}
    out["index"] = measured(cli("index", str(run), "--kind", kind, "--threads", "1"), env)
    export_dir = run.parent / f"{run.name}-export"
    export = cli(
        "export",
        str(run),
        "--split",
        "all",
        "--k",
        str(args.k),
        "--out",
        str(export_dir),
        "--partitioned",
        "--no-progress",
    )
    if kind != "flat":
        export += ["--index", kind]
    shutil.rmtree(export_dir, ignore_errors=True)
    out["export"] = measured(export, env)
    manifest = json.loads((run / "manifest.json").read_text())
    out["export"]["users_per_second"] = round(manifest["n_users"] / out["export"]["seconds"], 1)
    verify = subprocess.run(
        cli("export", str(run), "--out", str(export_dir), "--verify"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    out["export"]["verified"] = verify.returncode == 0
    out["api"] = api_p99(run, kind, args, env)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_p99(run: Path, index: str, args, env: dict[str, str]) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        cli("serve", str(run), "--port", str(port), "--index", index, "--workers", "1"),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + args.serve_timeout
        while time.time() < deadline:  # it listens at once and loads the run behind /readyz
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:  # refused, or 503 (HTTPError) while it loads
                pass
            if server.poll() is not None:
                return {"error": f"serve exited {server.returncode}"}
            time.sleep(1)
        else:
            return {"error": "serve was not ready"}
        try:
            load = script_json(
                "load_api.py", ["--run", str(run), "--url", url, "--seconds",
                                str(args.api_seconds), "--concurrency", "32", "--k", str(args.k)],
                env,
            )  # fmt: skip
        except subprocess.CalledProcessError as failed:  # the sizes before keep their numbers
            return {"error": f"load_api.py: {(failed.stderr or '').strip()[-300:]}"}
        level = load["levels"][0]
        return {key: level.get(key) for key in ("requests", "errors", "rps", "p50_ms", "p99_ms")}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def ddp(config: Path, args, env: dict[str, str]) -> dict:
    """Training pairs/s in one process and in two, ``--ddp-rounds`` interleaved rounds
    (dense updates, the faster ones at these sizes)."""
    result = script_json(
        "ddp_speed.py", ["--config", str(config), "--devices", "1,2", "--epochs",
                         str(args.ddp_epochs), "--repeat", str(args.ddp_rounds),
                         f"eval.max_users={args.eval_users}", "model.sparse_updates=false",
                         f"trainer.check_val_every_n_epoch={args.ddp_epochs}"], env,
    )  # fmt: skip
    return {key: result[key] for key in ("median_speedup", "runs")}


def script_json(name: str, arguments: list[str], env: dict[str, str]):
    """Run another ``bench/`` script and parse the JSON it prints."""
    cmd = [sys.executable, str(REPO / "bench" / name), *arguments]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="10000,100000,1000000")
    parser.add_argument("--models", default="lightgcn,das")
    parser.add_argument("--out", type=Path, default=Path("/tmp/recsys-scale"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--full-max",
        type=int,
        default=100_000,
        help="whole-graph training too up to this many items",
    )
    parser.add_argument("--eval-users", type=int, default=10_000)
    parser.add_argument("--index-kind", default="hnsw", help="the index above 50k items")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--api-seconds", type=float, default=10.0)
    parser.add_argument("--serve-timeout", type=float, default=900.0)
    parser.add_argument("--ddp", type=int, help="the size whose sampled models run DDP")
    parser.add_argument("--ddp-epochs", type=int, default=10)
    parser.add_argument("--ddp-rounds", type=int, default=3)
    parser.add_argument("--no-serving", action="store_true")
    parser.add_argument("--table", help="print the Markdown table of a result (-: stdin)")
    args = parser.parse_args()
    if args.table:
        text = sys.stdin.read() if args.table == "-" else Path(args.table).read_text()
        print(markdown(json.loads(text)))
        return
    try:
        sizes_wanted = [int(x) for x in args.items.split(",")]
        if min(sizes_wanted) < 10:
            raise ValueError
    except ValueError:
        parser.error(f"--items: comma-separated item counts of at least 10, got {args.items!r}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    sizes = []
    for n in sizes_wanted:
        start = time.perf_counter()
        data = args.out / f"data-{n}"
        meta = write(SyntheticSpec(n), data)
        size: dict = {
            "items": n,
            "users": meta["users"],
            "interactions": meta["interactions"],
            "generate_seconds": round(time.perf_counter() - start, 1),
            "train": {},
        }
        for model in args.models.split(","):
            for sampled in (True, False) if n <= args.full_max else (True,):
                name = f"scale-{model}-{'sampled' if sampled else 'full'}-{n}"
                config = run_config(model, sampled, data, args.out, args, name)
                size["train"][name] = train(config, env)
                print(json.dumps({name: size["train"][name]}), file=sys.stderr)
        served = size["train"].get(f"scale-lightgcn-sampled-{n}", {})
        if not args.no_serving and "run" in served:
            size["serving"] = serving(Path(served["run"]), n, args, env)
            print(json.dumps({"serving": size["serving"]}), file=sys.stderr)
        if args.ddp == n:
            size["ddp"] = {
                model: ddp(args.out / "configs" / f"scale-{model}-sampled-{n}.yaml", args, env)
                for model in args.models.split(",")
            }
        sizes.append(size)
    print(json.dumps({"sizes": sizes}, indent=1))


def markdown(result: dict) -> str:
    lines = [
        "| items | users | interactions | model | s / epoch | valid s | embeddings s |"
        " peak RSS GB | valid N@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in result["sizes"]:
        for name, r in size["train"].items():
            model = name.removeprefix("scale-").rsplit("-", 1)[0]
            if "error" in r:
                cells = [r["error"], "", "", "", ""]
            else:
                cells = [
                    f"{r['seconds_per_epoch']:.1f}",
                    f"{sum(r['valid_seconds']):.1f}",
                    f"{r['embedding_seconds'] or 0:.1f}",
                    f"{r['peak_rss_mb'] / 1024:.2f}",
                    f"{r['valid_ndcg@10']:.4f}",
                ]
            lines.append(
                f"| {size['items']:,} | {size['users']:,} | {size['interactions']:,} "
                f"| {model} | " + " | ".join(cells) + " |"
            )
    lines += [
        "",
        "| items | index | build s | build peak RSS GB | export users/s |"
        " export peak RSS GB | verified | API p99 ms (32 clients) | API requests/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in result["sizes"]:
        s = size.get("serving")
        if not s:
            continue
        idx, exp, api = s["index"], s["export"], s["api"]
        lines.append(
            f"| {size['items']:,} | {s['index_kind']} | {idx['seconds']} | "
            f"{idx['peak_rss_mb'] / 1024:.2f} | {exp.get('users_per_second')} | "
            f"{exp['peak_rss_mb'] / 1024:.2f} | {exp.get('verified')} | {api.get('p99_ms')} | "
            f"{api.get('rps')} |"
        )
    for size in result["sizes"]:
        for model, d in size.get("ddp", {}).items():
            lines.append(f"\nDDP, {model}-sampled, {size['items']:,} items (pairs/s per round):")
            for devices, speedup in d["median_speedup"].items():
                runs = [r for r in d["runs"] if r["devices"] == int(devices)]
                rates = ", ".join(f"{r['samples_per_second']:,}" for r in runs)
                lines.append(f"devices {devices}: {rates}; median speed-up {speedup}×")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
