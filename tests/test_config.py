from pathlib import Path

import pytest

from recsys.config import apply_overrides, load_yaml
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


def test_every_shipped_config_validates():
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        raw = load_yaml(path)
        if "model" in raw:  # run configs; other component configs are checked by their tests
            load_run_config(str(path))


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


def test_ablation_configs_follow_das_yaml():
    """configs/ablations/das*.yaml are configs/das.yaml minus one part each; regenerate
    them with bench/make_ablation_configs.py after editing das.yaml."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "bench" / "make_ablation_configs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
