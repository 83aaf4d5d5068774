"""Training configuration: PufferLib-style ``.ini`` files, command-line overrides, validation.

The settings for an environment are merged from (later wins)::

    config/default.ini  <-  config/<family>/default.ini  <-  config/<family>/<env>.ini

then from ``--train.<key>`` / ``--vec.<key>`` / ``--env.<key>`` overrides (dashes or underscores).
``config/default.ini`` declares every ``[train]`` and ``[vec]`` key; a family's ``default.ini``
declares its ``[env]`` keys (settings forwarded to the environment's constructor). Anything else is
an unknown key and a :class:`ConfigError`, as are sizes that cannot be split into whole
sequences and minibatches. The trainer receives a typed, frozen :class:`RunConfig`.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pufferfiber.envs import VEC_BACKENDS, check_env_name
from pufferfiber.envs import family_of as envs_family_of
from pufferfiber.policy import RNN_KINDS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
SECTIONS = ("train", "vec", "env", "policy")
PRECISIONS = ("float32", "bfloat16", "auto")
TRACKERS = ("none", "tensorboard")  # metric sinks beside the dashboard and metrics.jsonl


class ConfigError(ValueError):
    """A user-facing configuration problem (one-line message)."""


@dataclass(frozen=True)
class TrainConfig:
    """PPO hyperparameters and run settings (the ``[train]`` section)."""

    seed: int
    torch_deterministic: bool
    device: str
    torch_threads: int
    precision: str
    total_timesteps: int
    batch_size: int
    minibatch_size: int
    bptt_horizon: int
    update_epochs: int
    learning_rate: float
    anneal_lr: bool
    gamma: float
    gae_lambda: float
    norm_adv: bool
    clip_coef: float
    clip_vloss: bool
    vf_coef: float
    vf_clip_coef: float
    ent_coef: float
    max_grad_norm: float
    target_kl: float | None
    checkpoint_interval: int
    data_dir: str
    tracker: str = "none"

    @property
    def end_epoch(self) -> int:
        """Last epoch of the schedule: ``ceil(total_timesteps / batch_size)``."""
        return -(-self.total_timesteps // self.batch_size)


@dataclass(frozen=True)
class VecConfig:
    """Vectorisation (the ``[vec]`` section; the backend itself comes from ``--vec``)."""

    backend: str
    num_envs: int
    num_workers: int | None
    env_batch_size: int | None


@dataclass(frozen=True)
class PolicyConfig:
    """Choices of the network that are not sizes (the ``[policy]`` section)."""

    rnn: str = "lstm"


@dataclass(frozen=True)
class RunConfig:
    """Everything the trainer needs: env name, ``[train]``, ``[vec]`` and ``[env]`` settings."""

    env_name: str
    train: TrainConfig
    vec: VecConfig
    env: Mapping[str, Any]
    sources: tuple[str, ...] = ()
    policy: PolicyConfig = PolicyConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form stored in checkpoints (``torch.load(weights_only=True)``-safe)."""
        return {
            "env_name": self.env_name,
            "train": dataclasses.asdict(self.train),
            "vec": dataclasses.asdict(self.vec),
            "env": dict(self.env),
            "policy": dataclasses.asdict(self.policy),
            "sources": list(self.sources),
        }

    def replace_train(self, **changes: Any) -> RunConfig:
        """A copy with some ``[train]`` settings changed (validated again)."""
        cfg = dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))
        validate(cfg)
        return cfg


# One sentence per option; shown by ``demo.py --help``.
OPTION_HELP: dict[str, str] = {
    "train.seed": "seed of torch, numpy and the environments",
    "train.torch_deterministic": "ask torch for deterministic kernels (cuDNN)",
    "train.device": "auto (CUDA when present, else CPU), cpu, cuda or cuda:N",
    "train.torch_threads": "CPU threads for torch (0 = torch's default)",
    "train.precision": "float32; bfloat16 (the PPO update runs the encoder, convs + Linear, "
    "under bfloat16 autocast: ~1.6x faster on CPUs with AVX512-BF16/AMX); auto = bfloat16 "
    "where the CPU/GPU has native bfloat16, else float32",
    "train.total_timesteps": "agent steps of the whole schedule; last epoch = this / batch_size",
    "train.batch_size": "agent steps collected per epoch (a multiple of num_envs*bptt_horizon)",
    "train.minibatch_size": "agent steps per gradient step (divides batch_size)",
    "train.bptt_horizon": "length of the LSTM training sequences, in steps",
    "train.update_epochs": "passes over each batch",
    "train.learning_rate": "Adam learning rate (eps 1e-5)",
    "train.anneal_lr": "decay the learning rate linearly to 0 over total_timesteps",
    "train.gamma": "discount factor",
    "train.gae_lambda": "GAE lambda",
    "train.norm_adv": "normalise advantages per minibatch",
    "train.clip_coef": "PPO ratio clip",
    "train.clip_vloss": "clip the value loss around the rollout values",
    "train.vf_coef": "value loss weight",
    "train.vf_clip_coef": "value clip range",
    "train.ent_coef": "entropy bonus weight",
    "train.max_grad_norm": "gradient norm clip",
    "train.target_kl": "stop the update early when approx_kl exceeds this (None = never)",
    "train.checkpoint_interval": "save model_EEEEEE.pt every this many epochs (and at the end)",
    "train.data_dir": "parent folder of the run folders <env>-<id8>",
    "train.tracker": "none; tensorboard (event files in <run>/tensorboard/, written offline)",
    "vec.num_envs": "environments stepped in parallel",
    "vec.num_workers": "worker processes (multiprocessing/ray; None = one per env)",
    "vec.env_batch_size": "envs returned per step (multiprocessing/ray; None = all, synchronous)",
    "policy.rnn": "recurrent layer of a new network: lstm (PufferLib's) or gru; a resumed or "
    "collapsed run keeps its own",
    "env.frameskip": "Atari frames per agent step",
    "env.repeat_action_probability": "Atari sticky-action probability",
}


def family_of(env_name: str) -> str:
    """Config family folder of an environment (see ``pufferfiber.envs.ENV_FAMILIES``)."""
    return envs_family_of(env_name)


def config_files(env_name: str, config_dir: Path = CONFIG_DIR) -> list[Path]:
    """The ``.ini`` files merged for ``env_name``, in order (missing optional files skipped)."""
    base = config_dir / "default.ini"
    if not base.is_file():
        raise ConfigError(f"missing base config file {base}")
    family = config_dir / family_of(env_name)
    return [base, *(p for p in (family / "default.ini", family / f"{env_name}.ini") if p.is_file())]


def parse_value(text: str) -> Any:
    """An ini / command-line value as Python: ints (``10_000``), floats, bools, None, strings."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_ini(path: Path) -> dict[str, dict[str, str]]:
    """Raw ``{section: {key: text}}`` of one file (keys normalised to underscores)."""
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
    try:
        parser.read_string(path.read_text(), source=str(path))
    except (OSError, configparser.Error) as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"cannot read config file {path}: {first_line}") from None
    return {s: {normalise_key(k): v for k, v in parser[s].items()} for s in parser.sections()}


def normalise_key(key: str) -> str:
    return key.strip().replace("-", "_")


def _unknown_key(where: str, key: str, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown config key {key!r} in {where}{hint}; valid: {', '.join(valid)}")


def merge_files(files: Sequence[Path]) -> dict[str, dict[str, str]]:
    """Merge ini files; the first file fixes the ``[train]``/``[vec]`` keys, the family and env
    files the ``[env]`` keys (an Ocean game's ini lists its own constructor settings). Sections
    other than train/vec/env (e.g. PufferLib's ``[base]``) are ignored."""
    merged: dict[str, dict[str, str]] = {s: {} for s in SECTIONS}
    for i, path in enumerate(files):
        for section, values in read_ini(path).items():
            if section not in SECTIONS:
                continue
            declares = i == 0 or section == "env"
            for key, text in values.items():
                if key not in merged[section] and not declares:
                    valid = sorted(f"{section}.{k}" for k in merged[section])
                    raise _unknown_key(str(path), f"{section}.{key}", valid)
                merged[section][key] = text
    return merged


def parse_overrides(tokens: Sequence[str]) -> dict[str, str]:
    """``["--train.batch-size", "8", "--vec.num_envs=4"]`` → ``{"train.batch_size": "8", ...}``."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            raise ConfigError(f"unrecognized argument {token!r} (see --help)")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"--{name} needs a value")
            value = tokens[i + 1]
            i += 1
        section, _, key = name.partition(".")
        overrides[f"{normalise_key(section)}.{normalise_key(key)}"] = value
        i += 1
    return overrides


def apply_overrides(merged: dict[str, dict[str, str]], overrides: Mapping[str, str]) -> None:
    valid = sorted(f"{s}.{k}" for s in SECTIONS for k in merged[s])
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or key not in merged[section]:
            raise _unknown_key("the command line", dotted, valid)
        merged[section][key] = value


def _coerce(dotted: str, text: str, annotation: Any) -> Any:
    """``text`` as the field type ``annotation`` (int, float, bool, str, or X | None)."""
    value = parse_value(text)
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    if value is None and type(None) in options:
        return None
    target = next((t for t in options if t is not type(None)), annotation)
    if target is str:
        return str(text).strip()
    if target is bool and isinstance(value, bool):
        return value
    if target is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if target is int and isinstance(value, float) and value.is_integer():
        return int(value)  # accept 1e6 for step counts
    if target is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{dotted} must be {getattr(target, '__name__', target)}, got {text!r}")


def _build(cls: type, section: str, values: Mapping[str, str], **extra: Any) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = dict(extra)
    for field in dataclasses.fields(cls):
        if field.name in kwargs:
            continue
        if field.name not in values:
            raise ConfigError(f"config key {section}.{field.name} is missing from default.ini")
        kwargs[field.name] = _coerce(
            f"{section}.{field.name}", values[field.name], hints[field.name]
        )
    unknown = sorted(set(values) - set(kwargs))
    if unknown:
        valid = sorted(f"{section}.{f.name}" for f in dataclasses.fields(cls))
        raise _unknown_key("config", f"{section}.{unknown[0]}", valid)
    return cls(**kwargs)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` for values the trainer cannot honour."""
    t, v = cfg.train, cfg.vec
    for name in (
        "total_timesteps",
        "batch_size",
        "minibatch_size",
        "bptt_horizon",
        "update_epochs",
        "checkpoint_interval",
    ):
        _require(getattr(t, name) >= 1, f"train.{name} must be at least 1")
    _require(v.num_envs >= 1, "vec.num_envs must be at least 1")
    _require(0.0 <= t.gamma <= 1.0, "train.gamma must be in [0, 1]")
    _require(0.0 <= t.gae_lambda <= 1.0, "train.gae_lambda must be in [0, 1]")
    _require(t.learning_rate > 0, "train.learning_rate must be positive")
    _require(t.torch_threads >= 0, "train.torch_threads must be >= 0")
    _require(
        t.tracker in TRACKERS,
        f"train.tracker must be one of {', '.join(TRACKERS)}, got {t.tracker!r}",
    )
    _require(
        t.precision in PRECISIONS,
        f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}",
    )
    segment = v.num_envs * t.bptt_horizon
    _require(
        t.batch_size % segment == 0,
        f"train.batch_size ({t.batch_size}) must be a multiple of vec.num_envs × "
        f"train.bptt_horizon ({v.num_envs} × {t.bptt_horizon} = {segment})",
    )
    _require(
        t.minibatch_size <= t.batch_size and t.batch_size % t.minibatch_size == 0,
        f"train.minibatch_size ({t.minibatch_size}) must divide train.batch_size ({t.batch_size})",
    )
    _require(
        t.minibatch_size % t.bptt_horizon == 0,
        f"train.minibatch_size ({t.minibatch_size}) must be a multiple of train.bptt_horizon "
        f"({t.bptt_horizon})",
    )
    _require(
        v.backend in VEC_BACKENDS,
        f"unknown --vec {v.backend!r}; choose one of {', '.join(VEC_BACKENDS)}",
    )
    if v.num_workers is not None:
        _require(
            v.num_workers >= 1 and v.num_envs % v.num_workers == 0,
            f"vec.num_envs ({v.num_envs}) must be divisible by vec.num_workers ({v.num_workers})",
        )
    if v.backend == "ray" and v.env_batch_size is not None:
        # PufferLib 2.0.2's Ray pool re-arms only the first k workers after each step, so an
        # asynchronous batch never fills and training would hang.
        _require(
            v.env_batch_size == v.num_envs,
            f"--vec ray steps every env at once: vec.env_batch_size must be None or "
            f"vec.num_envs ({v.num_envs}), got {v.env_batch_size}",
        )
    if v.env_batch_size is not None:
        per_worker = v.num_envs // (v.num_workers or v.num_envs)
        _require(
            1 <= v.env_batch_size <= v.num_envs
            and v.num_envs % v.env_batch_size == 0
            and v.env_batch_size % per_worker == 0,
            f"vec.env_batch_size ({v.env_batch_size}) must divide vec.num_envs ({v.num_envs}) "
            f"and be a multiple of the envs per worker ({per_worker})",
        )
    _require(
        cfg.policy.rnn in RNN_KINDS,
        f"policy.rnn must be one of {', '.join(RNN_KINDS)}, got {cfg.policy.rnn!r}",
    )
    _require(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        f"train.device must be auto, cpu or cuda[:N], got {t.device!r}",
    )


def load_config(
    env_name: str,
    overrides: Mapping[str, str] | None = None,
    *,
    backend: str = "serial",
    config_dir: Path = CONFIG_DIR,
) -> RunConfig:
    """The validated configuration of ``env_name`` (files merged, then ``overrides`` applied)."""
    check_env_name(env_name)
    files = config_files(env_name, config_dir)
    merged = merge_files(files)
    apply_overrides(merged, overrides or {})
    train = _build(TrainConfig, "train", merged["train"])
    vec = _build(VecConfig, "vec", merged["vec"], backend=backend)
    env = {k: parse_value(text) for k, text in merged["env"].items()}
    policy = _build(PolicyConfig, "policy", merged["policy"])
    cfg = RunConfig(env_name, train, vec, env, tuple(str(p) for p in files), policy)
    validate(cfg)
    return cfg


def help_epilog(config_dir: Path = CONFIG_DIR) -> str:
    """Every config key with its meaning and ``config/default.ini`` value, for ``--help``."""
    try:
        base = merge_files([config_dir / "default.ini"])
    except ConfigError:
        base = {s: {} for s in SECTIONS}
    lines = [
        "config overrides (--section.key VALUE; dashes or underscores; defaults from "
        "config/default.ini, then config/<family>/default.ini and <env>.ini):"
    ]
    for dotted, text in OPTION_HELP.items():
        section, _, key = dotted.partition(".")
        default = base.get(section, {}).get(key)
        shown = f" [default: {default}]" if default is not None else " [atari only]"
        lines.append(f"  --{dotted.replace('_', '-')}  {text}{shown}")
    return "\n".join(lines)
