"""Config files, overrides, validation, and the options and help generated from the typed
sections (pufferfiber.config.sections, pufferfiber.cli.main)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pufferfiber.cli import main as cli
from pufferfiber.config.sections import (
    CONFIG_DIR,
    BreakConfig,
    CollapseConfig,
    ConfigError,
    RunConfig,
    config_files,
    load_config,
    load_section,
    option_fields,
    parse_layers,
    parse_overrides,
    parse_value,
    section_classes,
    section_types,
)
from pufferfiber.envs.registry import EnvError
from pufferfiber.workflows import hooks, train


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
        ({"break.intervall": "2"}, "did you mean break.interval"),
        ({"collapse.threshold": "2.5"}, "threshold must be between 0 and 2"),
        ({"collapse.epoch": "-5"}, "--collapse-epoch must be >= 0, got -5"),
        ({"collapse.criterion": "magic"}, "--criterion must be one of weights, data"),
        ({"collapse.lstm_rounds": "0"}, "collapse.lstm_rounds must be at least 1"),
        (
            {"collapse.criterion": "data", "collapse.lstm_criterion": "published"},
            "--lstm-criterion applies to the weights criterion only",
        ),
        ({"train.precision": "float16"}, "train.precision must be one of float32"),
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


def _help(argv: list[str]) -> str:
    """``demo.py ARGV --help`` with whitespace collapsed (argparse wraps lines)."""
    parser = cli.build_parser(cli.normalise_argv(argv))
    return " ".join(parser.format_help().split())


def _default_shown(text: str, option: str) -> str:
    """The ``(default: X)`` of ``option``'s entry in ``--help``."""
    start = text.index(f"{option} ")
    match = re.compile(r"\(default: ([^)]*)\)").search(text, start)
    assert match is not None, option
    return match.group(1)


@pytest.mark.parametrize("env", ["beam_rider", "puffer_pong", "cartpole"])
def test_help_shows_every_setting_with_the_chosen_envs_value(env: str) -> None:
    """Every field of every section, and every [env] key, has an option whose help shows the
    value this env runs with (not the base file's)."""
    cfg = load_config(env)
    text = _help(["--env", env])
    attrs = {cls: attr for attr, cls in section_types().items()}
    for cls, attr in attrs.items():
        for field in option_fields(cls):
            option = f"--{cls.SECTION}.{field.name.replace('_', '-')}"
            assert option in text, option
            value = getattr(getattr(cfg, attr), field.name)
            flag = field.metadata.get("flag")
            switch = isinstance(value, bool)  # --break-symmetry, --redo: switches, no default
            shown = _default_shown(text, flag if flag and not switch else option)
            assert shown == repr(value) if not isinstance(value, str) else shown == value, option
            assert field.metadata["help"].split()[0] in text  # the help sentence is there
    for key, value in cfg.env.items():
        assert _default_shown(text, f"--env.{key.replace('_', '-')}") == repr(value)


def test_help_of_beam_rider_shows_its_batch_not_the_base_one() -> None:
    assert _default_shown(_help(["--env", "beam_rider"]), "--train.batch-size") == "30720"
    assert _default_shown(_help(["--env=cartpole"]), "--train.batch-size") == "1024"
    assert _default_shown(_help(["--env", "puffer_pong"]), "--train.batch-size") == "8192"
    # an unknown env still gets a help (the base values); the error comes when it runs
    assert _default_shown(_help(["--env", "nope"]), "--train.batch-size") == "1024"


def test_typed_sections_are_the_runs_sections() -> None:
    """Every section dataclass is a field of RunConfig, saved by to_dict, declared in
    default.ini; the help text lives with each field."""
    cfg = load_config("cartpole")
    stored = cfg.to_dict()
    for name, cls in section_classes().items():
        keys = {f.name for f in option_fields(cls)}
        assert keys <= set(stored[name]), name
        for field in option_fields(cls):
            assert len(field.metadata["help"]) > 10, f"{name}.{field.name} needs a help text"
    assert stored["break"]["enabled"] is False and stored["collapse"]["threshold"] == 0.0
    assert set(stored) == {"env_name", "env", "sources", *section_classes()}
    assert {f.name for f in dataclasses.fields(RunConfig)} >= {"breaking", "collapse"}


def test_ini_defaults_match_the_library_defaults() -> None:
    """``[break]`` and ``[collapse]`` defaults are those of the classes and functions they
    configure, and the choices those the library accepts."""
    from pufferfiber.config import sections as config
    from pufferfiber.core import datafibers, fibers, policy
    from pufferfiber.core.criteria import DEFAULT_CRITERION, WeightCriterion
    from pufferfiber.rl.breaking import SymmetryBreaker
    from pufferfiber.workflows.collapse import FidelitySpec

    cfg = load_config("cartpole")
    b, c = cfg.breaking, cfg.collapse
    d = SymmetryBreaker()
    assert (b.interval, b.fiber_threshold, b.opfiber_threshold, b.maturity, b.fraction) == (
        d.interval,
        d.fiber_threshold,
        d.opfiber_threshold,
        d.maturity,
        d.fraction,
    )
    assert parse_layers(b.layers) is None and d.layers is None
    w, f = WeightCriterion(threshold=0.0), FidelitySpec()
    assert c.lstm_rounds == w.max_lstm_rounds == fibers.DEFAULT_LSTM_ROUNDS
    assert (c.fidelity_batch, c.fidelity_steps) == (f.batch, f.steps)
    assert c.criterion == DEFAULT_CRITERION and c.flatten_colours == w.flatten_colours
    assert c.lstm_criterion == w.lstm_criterion
    assert c.calibration_batch == datafibers.DEFAULT_CALIBRATION_BATCH
    assert c.calibration_steps == datafibers.DEFAULT_CALIBRATION_STEPS
    assert c.episodes_played == 3 and dataclasses.replace(c, criterion="data").episodes_played == 10
    assert config.RNN_KINDS == policy.RNN_KINDS


def test_a_user_config_file_is_merged_before_the_command_line(tmp_path: Path) -> None:
    mine = tmp_path / "mine.ini"
    mine.write_text("[train]\nlearning_rate = 0.01\nseed = 7\n[break]\nenabled = True\n")
    cfg = load_config("cartpole", {"train.seed": "3"}, extra_files=[mine])
    assert cfg.train.learning_rate == 0.01 and cfg.train.seed == 3 and cfg.breaking.enabled
    assert str(mine) in cfg.sources
    assert (
        _default_shown(_help(["--env", "cartpole", "--config", str(mine)]), "--train.seed") == "7"
    )
    mine.write_text("[train]\nlearning_rat = 0.01\n")
    with pytest.raises(ConfigError, match=r"did you mean train.learning_rate"):
        load_config("cartpole", extra_files=[mine])
    with pytest.raises(ConfigError, match="not found"):
        load_config("cartpole", extra_files=[tmp_path / "none.ini"])


def test_break_settings_build_the_breaker() -> None:
    """``--break-symmetry`` and ``--break.*`` reach :class:`SymmetryBreaker` (seeded by
    ``train.seed``); without ``--break-symmetry`` there is no hook."""
    args = cli.parse_args(["--env", "cartpole"])
    assert hooks.training_hooks(load_config("cartpole", args.overrides), args.overrides) == []
    argv = ["--env", "cartpole", "--break-symmetry", "--break.interval", "5",
            "--break.fiber-threshold", "0.1", "--break.opfiber_threshold", "0.2",
            "--break.maturity", "7", "--break.fraction", "0.25", "--break.layers", "linear1, lstm",
            "--train.seed", "4"]  # fmt: skip
    args = cli.parse_args(argv)
    (b,) = hooks.training_hooks(load_config("cartpole", args.overrides), args.overrides)
    assert (
        b.interval, b.fiber_threshold, b.opfiber_threshold, b.maturity, b.fraction, b.layers, b.seed
    ) == (5, 0.1, 0.2, 7, 0.25, ["linear1", "lstm"], 4)  # fmt: skip
    args = cli.parse_args(["--env", "cartpole", "--break-symmetry"])
    (d,) = hooks.training_hooks(load_config("cartpole", args.overrides), args.overrides)
    assert d.layers is None and d.opfiber_threshold is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--break.fraction", "1.5"], "fraction"),
        (["--break.fiber-threshold", "3"], "threshold"),
        (["--break.interval", "0"], "interval"),
        (["--break.maturity", "-1"], "maturity"),
    ],
)
def test_invalid_break_settings_are_usage_errors(argv: list[str], message: str) -> None:
    args = cli.parse_args(["--env", "cartpole", "--break-symmetry", *argv])
    cfg = load_config("cartpole", args.overrides)
    with pytest.raises(hooks.RunError, match=message):
        hooks.training_hooks(cfg, args.overrides)


def test_collapse_section_alone() -> None:
    c = load_section(CollapseConfig, {"collapse.threshold": "0.3", "collapse.layers": "lstm"})
    assert c.threshold == 0.3 and c.layer_list == ["lstm"]
    assert load_section(BreakConfig).layers == "all"
    with pytest.raises(ConfigError, match="threshold must be between 0 and 2"):
        load_section(CollapseConfig, {"collapse.threshold": "9"})


def test_replace_train_revalidates() -> None:
    cfg = load_config("cartpole")
    assert cfg.replace_train(total_timesteps=2048).train.end_epoch == 2
    with pytest.raises(ConfigError):
        cfg.replace_train(batch_size=1000)
    assert cfg.to_dict()["train"]["batch_size"] == cfg.train.batch_size


def test_resume_of_a_run_saved_before_break_was_a_section() -> None:
    """Older runs stored their symmetry-breaking settings only with the hook state: resuming
    restores them from there (and the rest from the stored sections)."""
    from types import SimpleNamespace

    stored = load_config("cartpole", {"train.learning_rate": "0.001"}).to_dict()
    del stored["break"], stored["collapse"]
    ckpt = SimpleNamespace(config=stored, path=Path("model_000002.pt"))
    settings = {"interval": 3, "fiber_threshold": 0.5, "opfiber_threshold": None, "maturity": 0,
                "fraction": 1.0, "layers": ["lstm"], "seed": 1}  # fmt: skip
    state = {"hooks": [{"settings": settings, "born": {}}]}
    cfg = train.resumed_config(load_config("cartpole"), ckpt, {}, None, state)
    assert cfg.train.learning_rate == 0.001
    b = cfg.breaking
    assert (b.enabled, b.interval, b.fiber_threshold, b.maturity, b.layers) == (
        True, 3, 0.5, 0, "lstm"
    )  # fmt: skip
    plain = train.resumed_config(load_config("cartpole"), ckpt, {}, None, {})
    assert plain.breaking.enabled is False


def test_python_defaults_agree_with_the_packaged_default_ini() -> None:
    """Every section built with no arguments (what a library caller gets) equals the section
    read from the packaged ``default.ini`` alone (what the command line starts from)."""
    for cls in section_classes().values():
        assert load_section(cls) == cls(), cls.SECTION
