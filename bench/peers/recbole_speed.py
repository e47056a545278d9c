"""RecBole's training speed on a given train/valid/test split (run in the peer venv).

    bench/peers/.venv/bin/python bench/peers/recbole_speed.py --split-dir DIR \\
        --model LightGCN --epochs 4 --batch-size 2048 --dim 64 --threads 1 [--out r.json]

DIR holds ``train.tsv``, ``valid.tsv`` and ``test.tsv`` (tab-separated, header
``user_id<TAB>item_id``, original string ids), e.g. as ``bench/speed.py`` writes them from this
project's split. They become RecBole atomic files (``benchmark_filename``) in a temp folder,
so RecBole trains and evaluates (full ranking, training items masked) on exactly that split,
with no filtering and no download. Trains for a fixed number of epochs (no early stopping),
timing each training epoch and each validation separately, then scores the test split with
the final model. Prints one JSON line. Standard library + RecBole only: this runs in the
peer venv (``bench/peers/README.md``), where this project is not installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

SPLITS = ("train", "valid", "test")
TOKEN = "split"  # RecBole's dataset name; not "ml-100k", which RecBole maps to its own copy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split-dir", required=True, type=Path)
    parser.add_argument("--model", default="LightGCN", choices=["LightGCN", "BPR"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2048, help="train_batch_size")
    parser.add_argument("--dim", type=int, default=64, help="embedding_size")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--eval-every", type=int, default=1, help="eval_step (epochs)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    return parser.parse_args(argv)


def write_atomic(split_dir: Path, data_dir: Path) -> dict[str, int]:
    """``<split>.tsv`` -> ``split.<split>.inter`` (``user_id:token item_id:token``); rows each."""
    data_dir.mkdir(parents=True)
    rows = {}
    for name in SPLITS:
        lines = (split_dir / f"{name}.tsv").read_text().splitlines()
        if not lines or lines[0].split("\t") != ["user_id", "item_id"]:
            raise SystemExit(f"{split_dir / name}.tsv: expected header 'user_id<TAB>item_id'")
        body = [line for line in lines[1:] if line.strip()]
        text = "\n".join(["user_id:token\titem_id:token", *body]) + "\n"
        (data_dir / f"{TOKEN}.{name}.inter").write_text(text)
        rows[name] = len(body)
    return rows


def recbole_config(args: argparse.Namespace, work: Path) -> dict:
    return {
        "data_path": str(work / "data"),  # RecBole appends the dataset name
        "checkpoint_dir": str(work / "saved"),
        "benchmark_filename": list(SPLITS),
        "field_separator": "\t",
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "load_col": {"inter": ["user_id", "item_id"]},
        # benchmark files skip RecBole's filtering; these make "no filtering" explicit anyway
        "rm_dup_inter": None,
        "val_interval": None,
        "filter_inter_by_user_or_item": False,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        # full ranking; split/order are unused with benchmark files (the files are the split)
        "eval_args": {"split": None, "group_by": "user", "order": "RO", "mode": "full"},
        "metrics": ["NDCG", "Recall"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "epochs": args.epochs,
        "stopping_step": args.epochs + 1,  # fixed epoch count: never stop early
        "eval_step": args.eval_every,
        "train_batch_size": args.batch_size,
        "embedding_size": args.dim,
        "seed": args.seed,
        "reproducibility": True,
        "worker": 0,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        "state": "ERROR",
    }


def r3(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def r4(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def run(args: argparse.Namespace, work: Path) -> dict:
    rows = write_atomic(args.split_dir.resolve(), work / "data" / TOKEN)
    os.chdir(work)  # RecBole writes ./log_tensorboard (and ./log, ./saved) relative to the cwd

    import recbole
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    if args.model == "LightGCN":
        import scipy.sparse

        if not hasattr(scipy.sparse.dok_matrix, "_update"):  # LightGCN.get_norm_adj_mat uses it
            raise SystemExit("RecBole 1.2.1's LightGCN needs scipy<1.13 (bench/peers/README.md)")
    torch.set_num_threads(args.threads)
    setup_start = time.perf_counter()
    config = Config(model=args.model, dataset=TOKEN, config_dict=recbole_config(args, work))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    setup_seconds = time.perf_counter() - setup_start

    n_train = train_data.dataset.inter_num
    if n_train != rows["train"]:
        raise SystemExit(f"RecBole kept {n_train} of {rows['train']} training rows")

    epoch_seconds: list[float] = []
    eval_seconds: list[float] = []
    valid_results: list[dict] = []
    first_eval: list[float] = []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train_epoch(*a, **kw):
        start = time.perf_counter()
        loss = train_epoch(*a, **kw)
        epoch_seconds.append(time.perf_counter() - start)
        return loss

    def timed_valid_epoch(*a, **kw):
        start = time.perf_counter()
        score, result = valid_epoch(*a, **kw)
        end = time.perf_counter()
        eval_seconds.append(end - start)
        valid_results.append(dict(result))
        if not first_eval:
            first_eval.append(end - fit_start)
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, timed_valid_epoch
    fit_start = time.perf_counter()
    trainer.fit(train_data, valid_data, verbose=False, saved=False, show_progress=False)
    fit_seconds = time.perf_counter() - fit_start
    start = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    test_seconds = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    after_first = epoch_seconds[1:] or epoch_seconds
    valid = valid_results[-1] if valid_results else {}
    return {
        "library": "recbole",
        "version": recbole.__version__,
        "torch": torch.__version__,
        "device": str(config["device"]),
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "dim": args.dim,
        "threads": args.threads,
        "eval_every": args.eval_every,
        "epoch_seconds": [r3(s) for s in epoch_seconds],
        "seconds_per_epoch_median_after_first": r3(statistics.median(after_first))
        if after_first
        else None,
        "eval_seconds": [r3(s) for s in eval_seconds],
        "first_eval_seconds_from_start": r3(first_eval[0]) if first_eval else None,
        "fit_seconds": r3(fit_seconds),
        "setup_seconds": r3(setup_seconds),
        "test_eval_seconds": r3(test_seconds),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "valid_ndcg@10": r4(valid.get("ndcg@10")),
        "valid_ndcg@10_per_eval": [r4(v.get("ndcg@10")) for v in valid_results],
        "test_ndcg@10": r4(test.get("ndcg@10")),
        "test_recall@20": r4(test.get("recall@20")),
        "n_users": dataset.user_num - 1,  # RecBole's id 0 is [PAD]
        "n_items": dataset.item_num - 1,
        "n_train": n_train,
        "n_valid": valid_data.dataset.inter_num,
        "n_test": test_data.dataset.inter_num,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out.resolve() if args.out else None
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy/torch load their thread pools
    warnings.filterwarnings("ignore")  # pkg_resources, pandas and torch deprecation noise
    logging.disable(logging.WARNING)  # RecBole logs through the root logger
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="recbole-speed-") as tmp:
        try:
            result = run(args, Path(tmp))
        finally:
            os.chdir(cwd)
    text = json.dumps(result)
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
