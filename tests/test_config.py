"""Config files, overrides and validation (pufferfiber.config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pufferfiber.config import (
    CONFIG_DIR,
    OPTION_HELP,
    ConfigError,
    TrainConfig,
    VecConfig,
    config_files,
    help_epilog,
    load_config,
    parse_overrides,
    parse_value,
)
from pufferfiber.envs import EnvError


def test_beam_rider_has_the_guides_hyperparameters() -> None:
    t = load_config("beam_rider").train
    assert (t.batch_size, t.total_timesteps, t.checkpoint_interval) == (30720, 9_216_000, 3)
    assert (t.minibatch_size, t.update_epochs, t.bptt_horizon) == (1024, 3, 2)
    assert t.learning_rate == pytest.approx(4.117e-4)
    assert (t.gamma, t.gae_lambda) == pytest.approx((0.9906, 0.1453))
    assert (t.clip_coef, t.vf_clip_coef, t.vf_coef) == pytest.approx((0.4966, 0.1328, 0.9859))
    assert (t.ent_coef, t.max_grad_norm) == pytest.approx((0.0110, 0.9385))
    assert t.anneal_lr is False and t.end_epoch == 300 and t.data_dir == "experiments"


def test_files_merge_base_family_env_in_order() -> None:
    names = [Path(p).relative_to(CONFIG_DIR).as_posix() for p in config_files("beam_rider")]
    assert names == ["default.ini", "atari/default.ini", "atari/beam_rider.ini"]
    # breakout has no file of its own: the Atari family defaults apply
    breakout = load_config("breakout")
    assert breakout.train.batch_size == 32768 and breakout.env["frameskip"] == 4
    cartpole = load_config("cartpole")
    assert Path(cartpole.sources[1]).parent.name == "classic_control"
    assert cartpole.env == {}


def test_overrides_accept_dashes_underscores_and_types() -> None:
    tokens = [
        "--train.batch-size",
        "2048",
        "--train.learning_rate=1e-3",
        "--vec.num-envs",
        "4",
        "--train.target-kl",
        "0.02",
        "--train.anneal_lr",
        "true",
        "--train.data-dir",
        "/x",
    ]
    cfg = load_config("cartpole", parse_overrides(tokens), backend="multiprocessing")
    assert cfg.train.batch_size == 2048 and cfg.vec.num_envs == 4
    assert cfg.train.learning_rate == 1e-3 and cfg.train.target_kl == 0.02
    assert cfg.train.anneal_lr is True and cfg.train.data_dir == "/x"
    assert cfg.vec.backend == "multiprocessing"
    assert load_config("cartpole", {"train.target_kl": "None"}).train.target_kl is None


def test_parse_value_reads_python_literals() -> None:
    assert parse_value("10_000_000") == 10_000_000
    assert parse_value("2.5e-4") == 2.5e-4
    assert parse_value("False") is False and parse_value("none") is None
    assert parse_value("experiments") == "experiments"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.bogus": "1"}, "unknown config key 'train.bogus'"),
        ({"train.batch_szie": "1"}, "did you mean train.batch_size"),
        ({"nope.x": "1"}, "unknown config key 'nope.x'"),
        ({"env.frameskip": "2"}, "unknown config key 'env.frameskip'"),  # not a cartpole key
        ({"train.batch_size": "1000"}, "multiple of vec.num_envs × train.bptt_horizon"),
        ({"train.minibatch_size": "2048"}, "must divide train.batch_size"),
        (
            {
                "train.minibatch_size": "12",
                "train.bptt_horizon": "8",
                "train.batch_size": "192",
                "vec.num_envs": "2",
            },
            "multiple of train.bptt_horizon",
        ),
        ({"train.batch_size": "abc"}, "train.batch_size must be int"),
        ({"train.gamma": "1.5"}, "train.gamma must be in [0, 1]"),
        ({"vec.num_workers": "3"}, "divisible by vec.num_workers"),
        ({"vec.env_batch_size": "3"}, "vec.env_batch_size (3) must divide"),
        ({"vec.env_batch_size": "2", "vec.num_workers": "2"}, "multiple of the envs per worker"),
        ({"train.device": "tpu"}, "train.device must be"),
    ],
)
def test_bad_settings_are_clear_errors(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("cartpole", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_env_and_backend() -> None:
    with pytest.raises(EnvError, match="valid envs: cartpole"):
        load_config("beam_rida")
    with pytest.raises(ConfigError, match="unknown --vec 'gpu'"):
        load_config("cartpole", backend="gpu")


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "default.ini").write_text((CONFIG_DIR / "default.ini").read_text())
    (tmp_path / "classic_control").mkdir()
    bad = tmp_path / "classic_control" / "cartpole.ini"
    bad.write_text("[train]\nlearning_rat = 0.1\n")
    with pytest.raises(ConfigError, match=r"learning_rat.*cartpole\.ini"):
        load_config("cartpole", config_dir=tmp_path)
    bad.write_text("[train\nbroken")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("cartpole", config_dir=tmp_path)


def test_parse_overrides_rejects_stray_tokens() -> None:
    assert parse_overrides(["--vec.num_envs=4"]) == {"vec.num_envs": "4"}
    with pytest.raises(ConfigError, match="unrecognized argument"):
        parse_overrides(["--frobnicate", "1"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--train.seed"])


def test_every_option_is_explained_in_help() -> None:
    keys = {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}
    keys |= {f"vec.{f.name}" for f in dataclasses.fields(VecConfig) if f.name != "backend"}
    keys |= {f"env.{k}" for k in load_config("beam_rider").env}
    assert keys <= set(OPTION_HELP)
    epilog = help_epilog()
    for key in keys:
        assert f"--{key.replace('_', '-')}" in epilog


def test_replace_train_revalidates() -> None:
    cfg = load_config("cartpole")
    assert cfg.replace_train(total_timesteps=2048).train.end_epoch == 2
    with pytest.raises(ConfigError):
        cfg.replace_train(batch_size=1000)
    assert cfg.to_dict()["train"]["batch_size"] == cfg.train.batch_size
