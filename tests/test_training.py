"""End-to-end training on tiny synthetic data: run folder, determinism, resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from recsys.artifacts import RunFolder
from recsys.eval.bundle import evaluate_run
from recsys.train.config import parse_run_config
from recsys.train.module import RecommenderModule
from recsys.train.runner import train_run


def make_config(tmp_path: Path, table: Path, name: str, **model) -> object:
    raw = {
        "name": name,
        "seed": 7,
        "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "table", "interactions": {"path": str(table)}, "split": "loo"},
        "model": {"kind": "lightgcn", "dim": 16, "layers": 2, **model},
        "trainer": {
            "max_epochs": 4,
            "patience": 10,
            "lr": 0.01,
            "progress_bar": False,
            "sampling": {"batch_size": 128},
        },
    }
    return parse_run_config(raw)


def test_run_folder_holds_everything(tmp_path, tiny_table):
    run = train_run(make_config(tmp_path, tiny_table, "full"))
    for rel in [
        "config.yaml",
        "manifest.json",
        "metrics.json",
        "interactions.parquet",
        "id_maps/users.parquet",
        "id_maps/items.parquet",
        "embeddings/users.npy",
        "embeddings/items.npy",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "logs/metrics.csv",
    ]:
        assert (run.root / rel).exists(), rel
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["model"] == "lightgcn" and len(manifest["data_fingerprint"]) == 16
    assert {"torch", "lightning", "torch_geometric"} <= set(manifest["versions"])
    metrics = run.metrics()
    assert metrics["training"]["epochs"] == 4
    # metrics.json agrees with a re-evaluation of the saved embeddings
    again = evaluate_run(run, "test")
    for key in ("ndcg@10", "recall@20", "mrr"):
        assert again[key] == pytest.approx(metrics["test"][key], abs=1e-9)
    # the saved embeddings are the best checkpoint's, not the last epoch's
    state = torch.load(run.checkpoint_dir / "best.ckpt", map_location="cpu", weights_only=True)
    ego = state["state_dict"]["model.gcn.embedding.weight"]
    assert not torch.equal(ego, torch.zeros_like(ego))
    # user ids in the id map are the original strings
    assert set(run.user_map().ids) == {f"u{i}" for i in range(60)}


def test_learns_something_beyond_popularity(tmp_path, tiny_table):
    cfg = make_config(tmp_path, tiny_table, "learn")
    cfg.trainer.max_epochs = 15
    lgcn = train_run(cfg).metrics()["test"]["ndcg@10"]
    pop = parse_run_config({**cfg.dump(), "name": "pop", "model": {"kind": "popularity"}})
    pop_ndcg = train_run(pop).metrics()["test"]["ndcg@10"]
    assert lgcn > pop_ndcg


def test_same_seed_same_metrics(tmp_path, tiny_table):
    a = train_run(make_config(tmp_path, tiny_table, "a")).metrics()["test"]
    b = train_run(make_config(tmp_path, tiny_table, "b")).metrics()["test"]
    for key, value in a.items():
        assert b[key] == pytest.approx(value, abs=1e-6), key
    ua = np.load(tmp_path / "runs" / "a" / "embeddings" / "users.npy")
    ub = np.load(tmp_path / "runs" / "b" / "embeddings" / "users.npy")
    np.testing.assert_allclose(ua, ub, atol=1e-6)


def crash_at(monkeypatch, epoch: dict[str, int]):
    """Make training die at the end of epoch ``epoch["epoch"]`` (read at each epoch, so a
    test can move it); returns the original hook to restore."""
    original = RecommenderModule.on_train_epoch_end

    def crash(self):
        if self.current_epoch == epoch["epoch"]:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", crash, raising=False)
    return original


@pytest.mark.parametrize(
    "ema_decay, model",
    [
        (None, {}),
        (0.5, {}),
        # sampled steps with lazily updated tables: the draws and the sparse moments resume
        (None, {"fanouts": [3, 3], "sparse_updates": True, "transition_dim": 8}),
    ],
)
def test_resume_after_crash_equals_uninterrupted(
    tmp_path, tiny_table, monkeypatch, ema_decay, model
):
    def config_of(name):
        config = make_config(tmp_path, tiny_table, name, **model)
        config.trainer.ema_decay = ema_decay  # averaged weights resume with the raw ones
        return config

    reference = train_run(config_of("ref")).metrics()

    original = crash_at(monkeypatch, {"epoch": 1})
    config = config_of("crashy")
    with pytest.raises(BaseException):  # noqa: B017 - Lightning may wrap the interrupt
        train_run(config)
    run = RunFolder(tmp_path / "runs" / "crashy")
    assert (run.checkpoint_dir / "last.ckpt").exists()
    assert not run.metrics_path.exists()  # nothing claims to be finished
    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", original, raising=False)

    resumed = train_run(config_of("crashy")).metrics()
    assert resumed["training"]["resumed"] is True
    import pandas as pd

    curves = pd.read_csv(run.log_dir / "metrics.csv")
    assert sorted(curves["epoch"].dropna().unique().astype(int)) == [0, 1, 2, 3]
    for key, value in reference["test"].items():
        assert resumed["test"][key] == pytest.approx(value, abs=1e-6), key
    # every logged value sits in its own column: the curve equals the uninterrupted one
    expected = pd.read_csv(tmp_path / "runs" / "ref" / "logs" / "metrics.csv")
    for column in ("val/ndcg@10", "val/recall@20", "train/loss"):
        got = curves.dropna(subset=[column]).groupby("epoch")[column].last()
        want = expected.dropna(subset=[column]).groupby("epoch")[column].last()
        pd.testing.assert_series_equal(got, want, check_exact=False, atol=1e-6)


def test_a_resumed_run_reports_the_training_time_of_all_its_parts(
    tmp_path, tiny_table, monkeypatch
):
    """train_seconds of a resumed run counts the seconds trained before the interruption
    (held by the checkpoint), not only those after the resume. The first part's clock
    jumps 1000 s, which a resumed part alone cannot reach by chance."""
    import types

    from recsys.train import clock, fit

    jump = {"seconds": 0.0}
    real = fit.time.perf_counter
    jumping = types.SimpleNamespace(perf_counter=lambda: real() + jump["seconds"])
    for module in (fit, clock):  # the fit's and the epoch clock's time
        monkeypatch.setattr(module, "time", jumping)
    original = RecommenderModule.on_train_epoch_end

    def slow_then_crash(self):
        if self.current_epoch == 0:
            jump["seconds"] += 1000.0  # an epoch 0 that took 1000 s
        if self.current_epoch == 1:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", slow_then_crash, raising=False)
    with pytest.raises(BaseException):  # noqa: B017 - Lightning may wrap the interrupt
        train_run(make_config(tmp_path, tiny_table, "crashy"))
    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", original, raising=False)

    training = train_run(make_config(tmp_path, tiny_table, "crashy")).metrics()["training"]
    assert training["resumed"] is True
    # the resume continues from the checkpoint of epoch 0, saved after its 1000 s
    assert training["train_seconds"] >= 1000.0
    assert training["seconds_to_best"] <= training["train_seconds"]


def test_a_second_crash_loses_no_curve(tmp_path, tiny_table, monkeypatch):
    import pandas as pd

    when = {"epoch": 1}
    original = crash_at(monkeypatch, when)
    config = make_config(tmp_path, tiny_table, "twice")
    with pytest.raises(BaseException):  # noqa: B017 - Lightning may wrap the interrupt
        train_run(config)
    when["epoch"] = 2  # the resumed attempt dies too, after logging epoch 1
    with pytest.raises(BaseException):  # noqa: B017
        train_run(config)
    run = RunFolder(tmp_path / "runs" / "twice")
    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", original, raising=False)
    train_run(config)
    curves = pd.read_csv(run.log_dir / "metrics.csv")
    assert sorted(curves["epoch"].dropna().unique().astype(int)) == [0, 1, 2, 3]
    assert not (run.log_dir / "metrics.before-resume.csv").exists()


def test_a_run_in_training_is_not_touched_by_a_second_train(tmp_path, tiny_table):
    """Two `recsys train` on one folder (a resume started twice) would interleave their
    checkpoints and logs: the second is refused, before even --fresh deletes anything."""
    from filelock import FileLock

    from recsys.errors import ConfigError

    config = make_config(tmp_path, tiny_table, "busy")
    run = train_run(config)
    finished = run.metrics_path.read_bytes()
    with FileLock(tmp_path / "runs" / ".busy.lock"):  # what a live training holds
        with pytest.raises(ConfigError, match=r"busy is being trained by another process"):
            train_run(config, fresh=True)
    assert run.metrics_path.read_bytes() == finished
    # released (as when that process ends or dies): training goes ahead again
    assert train_run(config, fresh=True).metrics()["test"] == json.loads(finished)["test"]


def test_existing_run_with_other_config_is_refused(tmp_path, tiny_table):
    from recsys.errors import ConfigError

    train_run(make_config(tmp_path, tiny_table, "same"))
    other = make_config(tmp_path, tiny_table, "same", dim=8)
    with pytest.raises(ConfigError, match="different config"):
        train_run(other)
    assert train_run(other, fresh=True).manifest()["embedding_dim"] == 8


def test_skip_finished_keeps_a_finished_run_and_resumes_the_rest(tmp_path, tiny_table):
    """`recsys train --skip-finished` restarts a list of runs after a crash: a run that
    finished with the same config on the same data is left byte for byte, anything else
    trains (or is refused) as without the flag."""
    from recsys.errors import ConfigError

    config = make_config(tmp_path, tiny_table, "kept")
    run = train_run(config)

    def files() -> dict[Path, tuple[bytes, int]]:  # contents and modification times
        return {
            p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.root.rglob("*") if p.is_file()
        }

    before = files()
    again = train_run(config, skip_finished=True)
    assert again.root == run.root
    assert files() == before
    # another config under that name is refused, as without the flag
    with pytest.raises(ConfigError, match="different config"):
        train_run(make_config(tmp_path, tiny_table, "kept", dim=8), skip_finished=True)
    with pytest.raises(ConfigError, match="pass one of them"):
        train_run(config, fresh=True, skip_finished=True)
    # a folder without a manifest (it never finished) trains, to the same numbers
    unfinished = make_config(tmp_path, tiny_table, "unfinished")
    train_run(unfinished).manifest_path.unlink()
    trained = train_run(unfinished, skip_finished=True)
    assert trained.manifest()["data_fingerprint"] == run.manifest()["data_fingerprint"]
    assert trained.metrics()["test"] == run.metrics()["test"]


def test_a_run_saved_before_a_config_key_existed_is_the_same_config(tmp_path, tiny_table):
    """A key added to a config since a run was saved, left at its default, does not make
    the folder another config (resume and --skip-finished keep it); a changed value and a
    key the code no longer knows do."""
    from recsys.errors import ConfigError

    config = make_config(tmp_path, tiny_table, "older")
    run = train_run(config)
    saved = yaml.safe_load(run.config_path.read_text())
    assert saved["trainer"].pop("ema_decay") is None  # as if saved before ema_decay existed
    run.config_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    before = run.manifest_path.stat().st_mtime_ns
    assert train_run(config, skip_finished=True).root == run.root
    assert run.manifest_path.stat().st_mtime_ns == before
    for changed in ({**saved["trainer"], "ema_decay": 0.9}, {**saved["trainer"], "old_key": 1}):
        run.config_path.write_text(yaml.safe_dump({**saved, "trainer": changed}))
        with pytest.raises(ConfigError, match="different config"):
            train_run(config, skip_finished=True)


def test_skip_finished_names_a_run_kept_from_another_commit(
    tmp_path, tiny_table, capsys, monkeypatch
):
    from recsys import artifacts
    from recsys.train import runner

    for module in (artifacts, runner):  # the manifest's writer and the check
        monkeypatch.setattr(module, "git_commit", lambda: "a" * 40)
    config = make_config(tmp_path, tiny_table, "old-code")
    run = train_run(config)
    capsys.readouterr()
    assert train_run(config, skip_finished=True).root == run.root
    assert "finished at commit" not in capsys.readouterr().err  # same commit: silent
    monkeypatch.setattr(runner, "git_commit", lambda: "b" * 40)
    assert train_run(config, skip_finished=True).root == run.root  # still kept
    err = capsys.readouterr().err
    assert f"finished at commit {'a' * 12}, the code is now at {'b' * 12}" in err


def test_a_finished_run_on_other_data_is_refused(tmp_path, tiny_table):
    """Same config and name, changed data: resuming would evaluate old weights on new
    data, so the folder is refused (and --skip-finished does not keep it)."""
    from recsys.errors import ConfigError

    config = make_config(tmp_path, tiny_table, "data")
    run = train_run(config)
    manifest = json.loads(run.manifest_path.read_text())
    manifest["data_fingerprint"] = "0" * 16  # as if trained on another version of the table
    run.manifest_path.write_text(json.dumps(manifest))
    for skip in (False, True):
        with pytest.raises(ConfigError, match="trained on other data"):
            train_run(config, skip_finished=skip)
    assert train_run(config, fresh=True).manifest()["data_fingerprint"] != "0" * 16


def _refit_config(tmp_path: Path, table: Path, name: str):
    cfg = make_config(tmp_path, table, name)
    cfg.trainer.max_epochs, cfg.trainer.patience = 6, 2
    cfg.trainer.refit = True
    return cfg


@pytest.mark.parametrize("ema_decay", [None, 0.5])
def test_refit_trains_on_train_plus_valid_for_the_selected_epochs(tmp_path, tiny_table, ema_decay):
    from recsys.data.dataset import load_dataset
    from recsys.data.splits import TRAIN, VALID
    from recsys.models import TrainingGraph, build_model
    from recsys.models.base import frozen_embeddings

    plain_cfg = _refit_config(tmp_path, tiny_table, "plain")
    plain_cfg.trainer.refit = False
    plain_cfg.trainer.ema_decay = ema_decay
    plain = train_run(plain_cfg)
    cfg = _refit_config(tmp_path, tiny_table, "refit")
    cfg.trainer.ema_decay = ema_decay
    run = train_run(cfg)
    metrics, reference = run.metrics(), plain.metrics()
    best = reference["training"]["best_epoch"]
    assert metrics["training"]["refit"]["epochs"] == best
    # valid reports the model selected on valid, exactly as without refit ...
    for key, value in reference["valid"].items():
        assert metrics["valid"][key] == pytest.approx(value, abs=1e-9), key
    np.testing.assert_allclose(
        np.load(run.root / "embeddings" / "users_valid.npy"),
        np.load(plain.root / "embeddings" / "users.npy"),
        atol=1e-6,
    )
    # ... while test is scored with a model trained from scratch on train + valid: the
    # saved vectors are those of that checkpoint loaded into a model built on that graph.
    dataset = load_dataset(cfg.data)
    known = np.isin(dataset.labels, (TRAIN, VALID))
    graph = TrainingGraph(
        dataset.n_users, dataset.n_items, dataset.users[known], dataset.items[known]
    )
    model = build_model(cfg.model, graph)
    state = torch.load(
        run.checkpoint_dir / "refit" / "last.ckpt", map_location="cpu", weights_only=True
    )
    import pandas as pd

    curves = pd.read_csv(run.log_dir / "refit" / "metrics.csv")
    assert sorted(curves["epoch"].dropna().unique().astype(int)) == list(range(best))
    model.load_state_dict({k[len("model.") :]: v for k, v in state["state_dict"].items()})
    user, item = frozen_embeddings(model)
    np.testing.assert_allclose(np.load(run.root / "embeddings" / "users.npy"), user, atol=1e-6)
    np.testing.assert_allclose(np.load(run.root / "embeddings" / "items.npy"), item, atol=1e-6)
    assert not np.allclose(user.numpy(), np.load(plain.root / "embeddings" / "users.npy"))
    if ema_decay is not None:  # that checkpoint's state_dict is the average, not the raw weights
        model.load_state_dict(
            {
                k[len("model.") :]: v
                for k, v in {**state["state_dict"], **state["ema_raw_parameters"]}.items()
            }
        )
        assert not np.allclose(frozen_embeddings(model)[0].numpy(), user.numpy(), atol=1e-4)
    again = evaluate_run(run, "test")
    assert again["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-9)
    assert again["ndcg@10"] != pytest.approx(reference["test"]["ndcg@10"], abs=1e-9)


def test_interrupted_refit_resumes(tmp_path, tiny_table, monkeypatch):
    reference = train_run(_refit_config(tmp_path, tiny_table, "ref")).metrics()
    original = RecommenderModule.on_train_epoch_end

    def crash(self):  # only in the refit phase, which runs without validation
        if self.valid_truth is None and self.current_epoch == 1:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", crash, raising=False)
    with pytest.raises(BaseException):  # noqa: B017 - Lightning may wrap the interrupt
        train_run(_refit_config(tmp_path, tiny_table, "crashy"))
    run = RunFolder(tmp_path / "runs" / "crashy")
    assert (run.checkpoint_dir / "refit" / "last.ckpt").exists()
    assert not run.metrics_path.exists()
    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", original, raising=False)
    resumed = train_run(_refit_config(tmp_path, tiny_table, "crashy")).metrics()
    for key, value in reference["test"].items():
        assert resumed["test"][key] == pytest.approx(value, abs=1e-6), key


def test_refit_of_a_finished_run_equals_refit_in_one_go(tmp_path, tiny_table, monkeypatch):
    from recsys.cli import main
    from recsys.errors import ConfigError
    from recsys.train.runner import refit_run

    one_go = train_run(_refit_config(tmp_path, tiny_table, "one-go")).metrics()
    plain_cfg = _refit_config(tmp_path, tiny_table, "plain")
    plain_cfg.trainer.refit = False
    plain = train_run(plain_cfg)
    before = plain.metrics_path.read_bytes()
    with pytest.raises(ConfigError, match="needs a name of its own"):
        refit_run(plain.root, "plain")
    argv = ["refit", str(plain.root), "--name", "plain-refit", "--no-progress"]
    monkeypatch.setattr(sys, "argv", ["recsys", *argv])  # what the manifest records
    assert main(argv) == 0
    copy = RunFolder(tmp_path / "runs" / "plain-refit")
    metrics = copy.metrics()
    # the first phase is copied (its curve and selected epoch), only the refit is trained;
    # the final embeddings' seconds are measured again by the refit (a timing of its own)
    own = ("refit", "embedding_seconds")
    first_phase = {k: v for k, v in metrics["training"].items() if k not in own}
    assert first_phase == {k: v for k, v in plain.metrics()["training"].items() if k not in own}
    assert metrics["training"]["embedding_seconds"] >= 0
    assert metrics["training"]["refit"]["epochs"] == one_go["training"]["refit"]["epochs"]
    curve = (copy.log_dir / "metrics.csv").read_bytes()
    assert curve == (plain.log_dir / "metrics.csv").read_bytes()
    for split in ("valid", "test"):
        for key, value in one_go[split].items():
            assert metrics[split][key] == pytest.approx(value, abs=1e-9), (split, key)
    assert metrics["test"]["ndcg@10"] != pytest.approx(plain.metrics()["test"]["ndcg@10"])
    assert plain.metrics_path.read_bytes() == before  # the source keeps its no-refit numbers
    saved = yaml.safe_load(copy.config_path.read_text())
    assert saved["name"] == "plain-refit" and saved["trainer"]["refit"] is True
    assert copy.manifest()["command"] == " ".join(["recsys", *argv])
    # a run trained with refit, or one whose first phase never finished, is refused
    with pytest.raises(ConfigError, match="already true"):
        refit_run(tmp_path / "runs" / "one-go", "again")
    (plain.checkpoint_dir / "selected.json").unlink()
    with pytest.raises(ConfigError, match="has not finished"):
        refit_run(plain.root, "other")
    assert not (tmp_path / "runs" / "other").exists()


def test_after_epoch_steps_runs_once_after_the_last_step_before_validation(
    tmp_path, tiny_table, monkeypatch
):
    from recsys.models.lightgcn import LightGCN

    events: list[str] = []
    loss, embeddings = LightGCN.loss, LightGCN.embeddings

    def record(name, fn):
        def wrapped(self, *args, **kwargs):
            events.append(name)
            return fn(self, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(LightGCN, "loss", record("step", loss))
    monkeypatch.setattr(LightGCN, "embeddings", record("rank", embeddings))
    monkeypatch.setattr(LightGCN, "after_epoch_steps", record("after", lambda self: None))
    monkeypatch.setattr(LightGCN, "on_train_epoch_start", record("start", lambda self, epoch: None))
    cfg = make_config(tmp_path, tiny_table, "hooks")
    cfg.trainer.max_epochs = 3
    train_run(cfg)
    epochs = "".join({"start": "S", "step": "s", "after": "A", "rank": "r"}[e] for e in events)
    per_epoch = epochs.split("S")[1:]
    assert len(per_epoch) == 3, epochs
    for body in per_epoch:  # steps, then the hook once, then validation's ranking
        steps = len(body) - len(body.lstrip("s"))
        assert steps > 1 and body[steps:].startswith("Ar"), epochs
        assert body.count("A") == 1, epochs


@pytest.mark.parametrize("report", [False, True])
def test_entries_set_after_the_epoch_reach_validation_under_weight_averaging(
    tmp_path, tiny_table, monkeypatch, report
):
    """An entry a model sets in ``after_epoch_steps`` (a re-seeded code) is what the
    averaged weights hold at validation when the hook reports it, not a blend."""
    from recsys.models.lightgcn import LightGCN

    seen: list[float] = []
    embeddings = LightGCN.embeddings

    def set_entry(self):
        name, weight = next(iter(self.named_parameters()))
        with torch.no_grad():
            weight[0, 0] = 7.0
        mask = torch.zeros_like(weight, dtype=torch.bool)
        mask[0, 0] = True
        return {name: mask} if report else {}

    def rank(self):
        seen.append(float(next(iter(self.parameters()))[0, 0]))
        return embeddings(self)

    monkeypatch.setattr(LightGCN, "after_epoch_steps", set_entry)
    monkeypatch.setattr(LightGCN, "embeddings", rank)
    cfg = make_config(tmp_path, tiny_table, f"restart-{report}")
    cfg.trainer.max_epochs = 2
    cfg.trainer.ema_decay = 0.5
    train_run(cfg)
    during_fit = seen[:2]  # one validation ranking per epoch, averaged weights in place
    assert len(during_fit) == 2
    if report:
        assert during_fit == [7.0, 7.0]
    else:  # the average blends the set value with the averaged history
        assert all(v != 7.0 for v in during_fit)


def test_eval_max_users_ranks_a_sample_of_the_users(tmp_path, tiny_table):
    """eval.max_users: the valid and test metrics average over that many users (a sample;
    the saved embeddings still rank every user)."""
    config = make_config(tmp_path, tiny_table, "sampled")
    config.trainer.max_epochs = 1
    config.eval.max_users = 5
    run = train_run(config)
    metrics = run.metrics()
    assert metrics["valid"]["n_users"] == metrics["test"]["n_users"] == 5
    assert evaluate_run(run)["n_users"] > 5  # every user, from the same embeddings


def test_no_optimiser_outlives_training_into_the_embeddings_and_evaluation(
    tmp_path, tiny_table, monkeypatch
):
    """Lightning's trainer, module and optimiser hold each other: without a collection
    Adam's moments (twice the model) stay in memory through the final embeddings and the
    evaluation, where a big catalogue peaks."""
    import gc

    import recsys.train.runner as runner

    alive = []
    original = runner.frozen_embeddings

    def counting(model):
        alive.append(sum(isinstance(o, torch.optim.Optimizer) for o in gc.get_objects()))
        return original(model)

    monkeypatch.setattr(runner, "frozen_embeddings", counting)
    gc.disable()  # no automatic collection to hide a leak
    try:
        config = _refit_config(tmp_path, tiny_table, "freed")
        train_run(config)
    finally:
        gc.enable()
    assert alive == [0, 0]  # before valid's embeddings, and after the refit before test's
