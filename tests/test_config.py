from pathlib import Path

import pytest

from recsys.config import apply_overrides, load_yaml, merge_configs
from recsys.errors import ConfigError
from recsys.train.config import load_run_config, parse_run_config

REPO = Path(__file__).resolve().parents[1]


def test_overrides_parse_yaml_scalars_and_nest():
    raw = {"model": {"dim": 64}, "trainer": {"lr": 0.1}}
    out = apply_overrides(
        raw, ["model.dim=128", "trainer.sampling.batch_size=16", "name=x", "eval.ks=[1,2]"]
    )
    assert out == {
        "model": {"dim": 128},
        "trainer": {"lr": 0.1, "sampling": {"batch_size": 16}},
        "name": "x",
        "eval": {"ks": [1, 2]},
    }
    assert raw["model"]["dim"] == 64  # the input is not mutated


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["model.dim"])


def test_misspelt_key_is_named():
    with pytest.raises(ConfigError, match=r"model\.dimm: unknown key"):
        load_run_config(str(REPO / "configs" / "lightgcn.yaml"), ["model.dimm=3"])
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch: unknown key"):
        load_run_config(str(REPO / "configs" / "lightgcn.yaml"), ["trainer.max_epoch=3"])
    with pytest.raises(ConfigError, match=r"data\.spilt: unknown key"):
        load_run_config(str(REPO / "configs" / "lightgcn.yaml"), ["data.spilt=loo"])


def test_wrong_type_and_unknown_model_kind():
    with pytest.raises(ConfigError, match=r"model\.dim"):
        parse_run_config({"name": "x", "model": {"kind": "mf", "dim": "big"}})
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        parse_run_config({"name": "x", "model": {"kind": "nope"}})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_yaml("/nonexistent/config.yaml")


def test_cli_help_lists_subcommands(capsys):
    from recsys.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "data", "evaluate", "table", "export"):
        assert command in out


def test_cli_misspelt_override_exits_nonzero_naming_the_key(capsys, tmp_path):
    from recsys.cli import main

    code = main(
        ["train", "-c", str(REPO / "configs" / "mf.yaml"), "model.dimm=3", f"output_dir={tmp_path}"]
    )
    assert code == 2
    assert "model.dimm: unknown key" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- base: composition ------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_merges_mappings_and_replaces_lists_and_scalars(tmp_path):
    _write(
        tmp_path / "base.yaml",
        "name: parent\nmodel: {kind: mf, dim: 8, reg: 0.1}\neval: {ks: [1, 2, 3]}\n"
        "trainer: {lr: 0.1, sampling: {batch_size: 4}}\n"
        "tune: {n_trials: 3, params: {model.dim: {choices: [4, 8]}}}\n",
    )
    child = _write(
        tmp_path / "child.yaml",
        "base: base.yaml\nname: child\nmodel: {dim: 16}\neval: {ks: [5]}\n"
        "trainer: {sampling: {negatives: in_batch}}\ntune: null\n",
    )
    raw = load_yaml(child)
    assert raw == {
        "name": "child",
        "model": {"kind": "mf", "dim": 16, "reg": 0.1},  # merged, the child's value wins
        "eval": {"ks": [5]},  # a list replaces
        "trainer": {"lr": 0.1, "sampling": {"batch_size": 4, "negatives": "in_batch"}},
        "tune": None,  # null replaces a whole section
    }
    config = load_run_config(str(child))
    assert (config.model.dim, config.model.reg, config.trainer.lr) == (16, 0.1, 0.1)
    assert config.trainer.sampling.batch_size == 4 and config.tune is None
    assert "base" not in config.dump() and "base" not in raw
    # a file without a base reads as itself
    assert load_yaml(tmp_path / "base.yaml")["tune"]["n_trials"] == 3


def test_merge_configs_does_not_mutate_its_inputs():
    base = {"model": {"dim": 8, "hidden": [1, 2]}}
    over = {"model": {"reg": 0.1}}
    out = merge_configs(base, over)
    out["model"]["hidden"].append(3)
    assert base == {"model": {"dim": 8, "hidden": [1, 2]}} and over == {"model": {"reg": 0.1}}


def test_base_list_applies_in_order_and_chains_resolve_relative_to_each_file(tmp_path):
    _write(tmp_path / "a.yaml", "name: a\nseed: 1\nmodel: {kind: mf, dim: 8, reg: 0.1}\n")
    _write(tmp_path / "b.yaml", "seed: 2\nmodel: {dim: 16}\n")
    _write(tmp_path / "sub" / "c.yaml", "base: [../a.yaml, ../b.yaml]\nname: c\n")
    grandchild = _write(
        tmp_path / "sub" / "deeper" / "d.yaml", "base: ../c.yaml\nmodel: {reg: 0.5}\n"
    )
    config = load_run_config(str(grandchild))
    assert config.name == "c" and config.seed == 2  # b after a; c over both
    assert (config.model.dim, config.model.reg) == (16, 0.5)
    assert "base" not in config.dump()
    # the same base twice (a diamond) is no cycle
    _write(tmp_path / "e.yaml", "base: [a.yaml, sub/c.yaml]\nname: e\n")
    assert load_run_config(str(tmp_path / "e.yaml")).seed == 2


def test_overrides_apply_after_composition(tmp_path):
    _write(tmp_path / "base.yaml", "name: b\nmodel: {kind: mf, dim: 8, reg: 0.1}\n")
    child = _write(tmp_path / "child.yaml", "base: base.yaml\nmodel: {dim: 16}\n")
    config = load_run_config(str(child), ["model.dim=32", "model.reg=0.5", "name=x"])
    assert (config.name, config.model.dim, config.model.reg) == ("x", 32, 0.5)
    with pytest.raises(ConfigError, match=r"model\.dimm: unknown key"):
        load_run_config(str(child), ["model.dimm=3"])


def test_base_cycle_is_an_error_naming_the_files(tmp_path):
    a = _write(tmp_path / "a.yaml", "base: b.yaml\nname: a\n")
    b = _write(tmp_path / "b.yaml", "base: a.yaml\nmodel: {kind: mf}\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_yaml(a)
    assert str(a) in str(err.value) and str(b) in str(err.value)
    itself = _write(tmp_path / "self.yaml", "base: ./self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_run_config(str(itself))


def test_missing_or_malformed_base_is_an_error_naming_both_files(tmp_path):
    child = _write(tmp_path / "child.yaml", "base: ../nowhere/das.yaml\nname: c\n")
    with pytest.raises(ConfigError, match="base file not found") as err:
        load_run_config(str(child))
    assert str(child) in str(err.value) and str(tmp_path / "../nowhere/das.yaml") in str(err.value)
    bad = _write(tmp_path / "bad.yaml", "base: 3\nname: c\n")
    with pytest.raises(ConfigError, match=f"{bad}: base must be a file name"):
        load_yaml(bad)


# -- the shipped ablation configs ----------------------------------------------------------

# configs/ablations/das*.yaml: configs/ablations/das.yaml (configs/das.yaml with the
# published stopping) with exactly these keys changed (and their names); a new ablation
# config must be listed here.
ABLATED = {
    "das.yaml": {},
    "das-no-align.yaml": {
        "model.weights.align_dual": 0.0,
        "model.weights.align_self": 0.0,
        "model.weights.cooc": 0.0,
    },
    "das-no-cooc.yaml": {"model.weights.cooc": 0.0},
    "das-no-debias.yaml": {
        "model.pop_dim": 0,
        "model.weights.debias_pop": 0.0,
        "model.weights.debias_orth": 0.0,
    },
    "das-no-dual.yaml": {"model.dual": False},
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_ablation_configs_differ_from_das_yaml_in_exactly_their_ablated_keys():
    full = _flat(load_run_config(str(REPO / "configs" / "ablations" / "das.yaml")).dump())
    paths = sorted((REPO / "configs" / "ablations").glob("das*.yaml"))
    assert [p.name for p in paths] == sorted(ABLATED)
    for path in paths:
        ablated = _flat(load_run_config(str(path)).dump())
        changed = {k: v for k, v in ablated.items() if full.get(k) != v}
        changed.pop("name", None)
        assert changed == ABLATED[path.name], path.name
        assert all(full[k] != v for k, v in ABLATED[path.name].items())  # each removes a part


def test_other_ablation_rows_share_das_yaml_budget_and_transition_block():
    """The LightGCN and two-stage rows of the ablation table train like its DAS row."""
    das = load_run_config(str(REPO / "configs" / "ablations" / "das.yaml")).dump()
    for name in ["lightgcn.yaml", "two-stage.yaml"]:
        other = load_run_config(str(REPO / "configs" / "ablations" / name)).dump()
        assert other["trainer"] == das["trainer"], name
        for section in ["data", "seed", "eval"]:
            assert other[section] == das[section], (name, section)
        for key in ["transition_dim", "transition_decay"]:
            assert other["model"][key] == das["model"][key], (name, key)


def test_the_default_configs_share_one_training_rule_and_the_transition_block():
    """Issue 28: every model's default config trains under the same size-aware rule, and
    the graph models' defaults carry the same next-item block, so that they compare."""
    defaults = {
        name: load_run_config(str(REPO / "configs" / f"{name}.yaml")).dump()
        for name in ["das", "lightgcn", "two_stage", "mf"]
    }
    rule, das = defaults["das"]["trainer"], defaults["das"]
    assert rule["min_steps"] and rule["patience_steps"]
    assert rule["check_val_every_n_epoch"] == "auto"
    for name, config in defaults.items():
        assert config["trainer"] == rule, name
        assert (config["data"], config["seed"]) == (das["data"], das["seed"])
    for name in ["lightgcn", "two_stage"]:
        for key in ["transition_dim", "transition_decay", "transition_window"]:
            assert defaults[name]["model"][key] == das["model"][key], (name, key)
    # The published configs built on them keep the stopping they were published with.
    for path in [*(REPO / "configs" / "ablations").glob("*.yaml"),
                 *(REPO / "configs" / "bench").glob("*.yaml")]:  # fmt: skip
        trainer = load_run_config(str(path)).dump()["trainer"]
        assert trainer["min_steps"] is None and trainer["patience_steps"] is None, path.name
        assert trainer["check_val_every_n_epoch"] == 1, path.name
