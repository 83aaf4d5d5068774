"""Run configuration: typed ini sections, their command-line options, merging and validation.

Every setting is a field of one section dataclass below (``[train]``, ``[vec]``, ``[break]``,
``[collapse]``), declared with :func:`setting`: its type, its one-sentence help and, where the
guide's command line names it differently, its flag (``--collapse TAU`` for
``collapse.threshold``). Command-line options, ``--help`` and validation are all generated from
these fields; adding a setting is one field here plus its default in ``configs/default.ini``.
``[env]`` is the exception: its keys are the environment constructor's, declared by the
family's ini file (an Ocean game lists its own).

The values for an environment are merged from (later wins)::

    configs/default.ini  <-  configs/<family>/default.ini  <-  configs/<family>/<env>.ini
      <-  --config FILE  <-  --<section>.<key> VALUE on the command line

The ini files ship inside the package (``pufferfiber/configs``). ``default.ini`` declares
every key of every typed section, a family's ``default.ini`` its ``[env]`` keys; any other key
is a :class:`ConfigError` naming the closest valid one. The trainer and the commands receive a
frozen, validated :class:`RunConfig`, stored with every checkpoint (:meth:`RunConfig.to_dict`).
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
from typing import Any, ClassVar

from pufferfiber.core.types import (
    CRITERIA,
    DATA_FITS,
    DATA_PIVOTS,
    FLATTEN_COLOURS,
    LSTM_CRITERIA,
    RNN_KINDS,
    validate_target,
    validate_threshold,
)
from pufferfiber.envs.registry import VEC_BACKENDS, check_env_name, family_of

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PRECISIONS = ("float32", "bfloat16", "auto")
TRACKERS = ("none", "tensorboard")  # metric sinks beside the dashboard and metrics.jsonl


class ConfigError(ValueError):
    """A user-facing configuration problem (one-line message)."""


def setting(
    help: str,
    *,
    flag: str | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    ini: bool = True,
    default: Any = dataclasses.MISSING,
) -> Any:
    """A section field: ``help`` is shown by ``--help``; ``flag`` is the guide's name for the
    option (besides ``--section.key``); ``ini=False`` marks a field set by the program, not
    by ini files or ``--section.key`` (the vec backend comes from ``--vec``)."""
    meta = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "ini": ini}
    return dataclasses.field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------ sections

# The layers a training hook edits ([break] and [redo]).
TRAINING_LAYERS_HELP = (
    "comma-separated layers (conv1, linear1, lstm...) or kinds (conv, linear, lstm, gru), or all"
)


@dataclass(frozen=True)
class TrainConfig:
    """PPO hyperparameters and run settings."""

    SECTION: ClassVar[str] = "train"

    seed: int = setting("seed of torch, numpy and the environments", default=1)
    torch_deterministic: bool = setting("ask torch for deterministic kernels (cuDNN)", default=True)
    device: str = setting("auto (CUDA when present, else CPU), cpu, cuda or cuda:N", default="auto")
    torch_threads: int = setting("CPU threads for torch (0 = torch's default)", default=0)
    rollout_threads: int = setting(
        "CPU threads of the rollout's inference (0 = auto: torch_threads on a CPU with the "
        "serial backend, where the envs step in this same thread between inferences; 1 with "
        "env worker processes or a GPU, where more threads only spin against the workers)",
        default=0,
    )
    precision: str = setting(
        "float32; bfloat16 (the PPO update runs the encoder, convs + Linear, under bfloat16 "
        "autocast: ~1.6x faster on CPUs with AVX512-BF16/AMX); auto = bfloat16 where the "
        "CPU/GPU has native bfloat16, else float32",
        choices=PRECISIONS,
        default="float32",
    )
    total_timesteps: int = setting(
        "agent steps of the whole schedule; last epoch = this / batch_size", default=10_000_000
    )
    batch_size: int = setting(
        "agent steps collected per epoch (a multiple of num_envs*bptt_horizon)", default=1024
    )
    minibatch_size: int = setting("agent steps per gradient step (divides batch_size)", default=512)
    bptt_horizon: int = setting("length of the LSTM training sequences, in steps", default=16)
    update_epochs: int = setting("passes over each batch", default=4)
    learning_rate: float = setting("Adam learning rate (eps 1e-5)", default=0.00025)
    anneal_lr: bool = setting(
        "decay the learning rate linearly to 0 over total_timesteps", default=False
    )
    gamma: float = setting("discount factor", default=0.99)
    gae_lambda: float = setting(
        "GAE lambda: 0 = one-step TD advantages, 1 = Monte-Carlo returns", default=0.95
    )
    norm_adv: bool = setting("normalise advantages per minibatch", default=True)
    clip_coef: float = setting("PPO ratio clip", default=0.1)
    clip_vloss: bool = setting("clip the value loss around the rollout values", default=True)
    vf_coef: float = setting("value loss weight", default=0.5)
    vf_clip_coef: float = setting("value clip range", default=0.1)
    ent_coef: float = setting("entropy bonus weight", default=0.01)
    max_grad_norm: float = setting("gradient norm clip", default=0.5)
    target_kl: float | None = setting(
        "stop the update early when approx_kl exceeds this (None = never)", default=None
    )
    checkpoint_interval: int = setting(
        "save model_EEEEEE.pt every this many epochs (and at the end)", default=200
    )
    data_dir: str = setting("parent folder of the run folders <env>-<id8>", default="experiments")
    tracker: str = setting(
        "none, or tensorboard (event files in <run>/tensorboard/, written offline)",
        choices=TRACKERS,
        default="none",
    )

    @property
    def end_epoch(self) -> int:
        """Last epoch of the schedule: ``ceil(total_timesteps / batch_size)``."""
        return -(-self.total_timesteps // self.batch_size)


@dataclass(frozen=True)
class VecConfig:
    """Vectorisation of the environments."""

    SECTION: ClassVar[str] = "vec"

    backend: str = setting("serial, multiprocessing or ray", ini=False, default="serial")
    num_envs: int = setting("environments stepped in parallel", default=8)
    num_workers: int | None = setting(
        "worker processes (multiprocessing/ray; None = one per env)", default=None
    )
    env_batch_size: int | None = setting(
        "envs returned per step (multiprocessing/ray; None = all, synchronous)", default=None
    )


@dataclass(frozen=True)
class PolicyConfig:
    """Choices of a new network that are not sizes."""

    SECTION: ClassVar[str] = "policy"

    rnn: str = setting(
        "recurrent layer of a new network: lstm (PufferLib's) or gru; a resumed or collapsed "
        "run keeps its own",
        choices=RNN_KINDS,
        default="lstm",
    )


@dataclass(frozen=True)
class BreakConfig:
    """Symmetry breaking during training (see ``pufferfiber.rl.breaking``)."""

    SECTION: ClassVar[str] = "break"

    enabled: bool = setting(
        "re-initialise mature redundant units during training without changing the function",
        flag="--break-symmetry",
        default=False,
    )
    interval: int = setting("break every this many epochs", metavar="EPOCHS", default=10)
    fiber_threshold: float = setting(
        "fiber threshold τ in [0, 2]; 0 = exact fibers, function exactly preserved",
        metavar="TAU",
        default=0.3,
    )
    opfiber_threshold: float | None = setting(
        "also require the same opfiber at this τ (None = off)", metavar="TAU", default=None
    )
    maturity: int = setting(
        "only break units at least this many epochs old", metavar="EPOCHS", default=20
    )
    fraction: float = setting(
        "share of the mature redundant units broken each time, in [0, 1]", default=0.5
    )
    layers: str = setting(TRAINING_LAYERS_HELP, metavar="LAYERS", default="all")


@dataclass(frozen=True)
class RedoConfig:
    """ReDo resets of dormant units during training (see ``pufferfiber.rl.redo``)."""

    SECTION: ClassVar[str] = "redo"

    enabled: bool = setting(
        "recycle dormant units during training (Sokar et al. 2023): fresh incoming weights, "
        "outgoing weights zeroed",
        flag="--redo",
        default=False,
    )
    tau: float = setting(
        "a unit is dormant when its mean |activation| is at most TAU times its layer's mean; "
        "0 = only dead units",
        metavar="TAU",
        default=0.1,
    )
    interval: int = setting("reset every this many epochs", metavar="EPOCHS", default=10)
    layers: str = setting(TRAINING_LAYERS_HELP, metavar="LAYERS", default="all")


@dataclass(frozen=True)
class CollapseConfig:
    """How a checkpoint is collapsed (``--collapse τ`` and ``pufferfiber collapse``)."""

    SECTION: ClassVar[str] = "collapse"
    # Settings of the collapse-and-retrain protocol only (not of the standalone collapse).
    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("epoch", "until")

    threshold: float = setting(
        "collapse fibers at cosine distance <= TAU (0 < TAU <= 2; 0 = off), then resume "
        "training from the collapsed model; with criterion data: the largest relative fit "
        "error of a removed unit",
        flag="--collapse",
        metavar="TAU",
        default=0.0,
    )
    target: float | None = setting(
        "collapse to this fraction F of the parameters (0 < F <= 1) instead of a threshold: "
        "the Linear and recurrent layers keep one common fraction of their units (the "
        "convolutions too only when F needs them), planned again after each layer; the τ it "
        "corresponds to is recorded in fidelity.json",
        metavar="F",
        default=None,
    )
    epoch: int = setting(
        "collapse the checkpoint closest to this epoch (the one picked is reported when it "
        "differs)",
        flag="--collapse-epoch",
        default=50,
    )
    until: int | None = setting(
        "train the collapsed model up to this epoch (None = the last epoch of the schedule, "
        "total_timesteps / batch_size)",
        flag="--collapse-until",
        default=None,
    )
    criterion: str = setting(
        "how fibers are found: weights (cosine distance of input-collapsed weight rows <= TAU) "
        "or data (outputs constant or affinely related on real observations played by the "
        "policy, relative fit error <= TAU)",
        flag="--criterion",
        choices=CRITERIA,
        default="weights",
    )
    flatten_colours: str = setting(
        "conv->Linear colours: positions (channel fiber, image position: a true fibration) or "
        "pooled (summed over positions, the published reference's criterion)",
        flag="--flatten-colours",
        choices=FLATTEN_COLOURS,
        default="positions",
    )
    lstm_criterion: str = setting(
        "weights criterion, LSTM: units (a unit's four gate rows with biases, exact fixed "
        "point then bounded re-clustering) or published (the reference's joint gate-row "
        "clustering, no biases, 5 rounds)",
        flag="--lstm-criterion",
        choices=LSTM_CRITERIA,
        default="units",
    )
    layers: str = setting(
        "comma-separated layers to collapse: kinds (conv, linear, lstm), labels (conv1, "
        "linear1...) or all",
        metavar="LAYERS",
        default="all",
    )
    lstm_rounds: int = setting(
        "approximate LSTM re-clustering rounds (more rounds cascade into far fewer units; "
        "the exact case always runs to a fixed point)",
        metavar="N",
        default=1,
    )
    fit: str = setting(
        "data criterion: lstsq (each removed unit rebuilt by least squares from several kept "
        "units) or affine (from one representative, a_j = s*a_r + t: plain fibers)",
        choices=DATA_FITS,
        default="lstsq",
    )
    pivot: str = setting(
        "data criterion, lstsq: keep next the unit whose fit removes the most error where its "
        "consumers see it (consumer: outgoing-weight Gram matrix) or the unit with the largest "
        "unexplained variance (variance: pivoted Cholesky, the earlier default)",
        choices=DATA_PIVOTS,
        default="consumer",
    )
    calibration_batch: int = setting(
        "data criterion: calibration sequences played by the policy on env seeds SEED+1000..",
        metavar="B",
        default=16,
    )
    calibration_steps: int = setting(
        "data criterion: steps per calibration sequence, LSTM state carried",
        metavar="T",
        default=512,
    )
    episodes: int | None = setting(
        "episodes played by the collapsed policy for its return before retraining (0 = skip; "
        "None = 3, or 10 with criterion data)",
        metavar="N",
        default=None,
    )
    fidelity_batch: int = setting(
        "real observation sequences for KL and value error, env seeds SEED.. (held out for "
        "criterion data)",
        metavar="B",
        default=8,
    )
    fidelity_steps: int = setting("steps per sequence, LSTM state carried", metavar="T", default=64)

    @property
    def layer_list(self) -> list[str] | None:
        """``layers`` as a list; ``None`` for every hidden layer."""
        return parse_layers(self.layers)

    @property
    def enabled(self) -> bool:
        """Whether collapse-and-retrain is on: a threshold (0 = off) or a size target."""
        return self.threshold != 0 or self.target is not None

    @property
    def size_knob(self) -> dict[str, float | None]:
        """``threshold`` and ``target`` as :func:`collapse_to_folder` takes them (one is None)."""
        if self.target is not None:
            return {"threshold": None, "target": self.target}
        return {"threshold": self.threshold, "target": None}

    @property
    def episodes_played(self) -> int:
        """``episodes``, or its default for the criterion (more for the noisier data fibers)."""
        if self.episodes is not None:
            return self.episodes
        return 10 if self.criterion == "data" else 3


# Help of the [env] keys, which the environment's constructor defines (not a typed section).
ENV_HELP = "setting of the environment's constructor"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs: the env name and one object per section.

    A new section is one more field here whose type is a section dataclass (with a
    ``SECTION`` name and :func:`setting` fields) and its keys in ``configs/default.ini``.
    """

    env_name: str
    train: TrainConfig
    vec: VecConfig
    env: Mapping[str, Any]
    policy: PolicyConfig
    breaking: BreakConfig
    redo: RedoConfig
    collapse: CollapseConfig
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form stored in checkpoints (``torch.load(weights_only=True)``-safe)."""
        out: dict[str, Any] = {"env_name": self.env_name, "env": dict(self.env)}
        for attr, cls in section_types().items():
            out[section_name(cls)] = dataclasses.asdict(getattr(self, attr))
        out["sources"] = list(self.sources)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """The configuration :meth:`to_dict` wrote (validated again): how a run's typed settings
        cross a process boundary as JSON."""
        sections = {
            attr: section_cls(**dict(data[section_name(section_cls)]))
            for attr, section_cls in section_types().items()
        }
        cfg = cls(
            env_name=str(data["env_name"]),
            env=dict(data.get("env") or {}),
            sources=tuple(data.get("sources") or ()),
            **sections,
        )
        validate(cfg)
        return cfg

    def replace_train(self, **changes: Any) -> RunConfig:
        """A copy with some ``[train]`` settings changed (validated again)."""
        cfg = dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))
        validate(cfg)
        return cfg


def section_name(cls: type) -> str:
    """The ini section of a section dataclass (its ``SECTION``)."""
    return str(vars(cls)["SECTION"])


def section_types() -> dict[str, type]:
    """``{RunConfig attribute: section dataclass}`` in declaration order."""
    hints = typing.get_type_hints(RunConfig)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(RunConfig)
        if isinstance(hints[f.name], type) and hasattr(hints[f.name], "SECTION")
    }


def section_classes() -> dict[str, type]:
    """``{section name: dataclass}`` of the typed sections (``train``, ``vec``, ...)."""
    return {section_name(cls): cls for cls in section_types().values()}


def section_names() -> tuple[str, ...]:
    """Every section read from ini files: the typed ones and ``env``."""
    return (*section_classes(), "env")


def option_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a section that ini files and ``--section.key`` set."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("ini", True)]


def field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def type_name(annotation: Any) -> str:
    """``INT``, ``FLOAT``, ``BOOL``, ``STR`` (``INT|NONE`` for optional fields): metavars."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    names = [getattr(t, "__name__", str(t)) for t in (options or (annotation,))]
    return "|".join("NONE" if n == "NoneType" else n.upper() for n in names)


# ------------------------------------------------------------------------------------- parsing


def parse_layers(text: str | Sequence[str] | None) -> list[str] | None:
    """A layer selection: ``"all"`` / empty → ``None`` (every hidden layer), else the
    comma-separated names, labels or kinds (checked by ``LayerGraph.select_hidden``)."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(map(str, text))
    items = [t for t in items if t]
    return None if not items or items == ["all"] else items


def config_files(env_name: str, config_dir: Path = CONFIG_DIR) -> list[Path]:
    """The ``.ini`` files merged for ``env_name``, in order (missing optional files skipped)."""
    (base,) = config_files_base(config_dir)
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
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
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
    """Merge ini files; the first file fixes the keys of the typed sections, the family and env
    files the ``[env]`` keys (an Ocean game's ini lists its own constructor settings). Other
    sections (e.g. PufferLib's ``[base]``) are ignored."""
    names = section_names()
    merged: dict[str, dict[str, str]] = {s: {} for s in names}
    for i, path in enumerate(files):
        if i > 0 and not Path(path).is_file():  # a user's --config file
            raise ConfigError(f"config file {path} not found")
        for section, values in read_ini(path).items():
            if section not in names:
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


def apply_overrides(
    merged: dict[str, dict[str, str]], overrides: Mapping[str, str], where: str = "the command line"
) -> None:
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in merged:
            raise ConfigError(
                f"unknown config key {dotted!r} in {where}: no section [{section}]; "
                f"sections: {', '.join(merged)}"
            )
        if key not in merged[section]:
            valid = sorted(f"{section}.{k}" for k in merged[section])
            if not valid:
                raise ConfigError(
                    f"unknown config key {dotted!r} in {where}: [{section}] has no keys here"
                )
            raise _unknown_key(where, dotted, valid)
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


def build_section(cls: type, values: Mapping[str, str], **given: Any) -> Any:
    """Section ``cls`` from the ini texts ``values`` (``given`` fields are set directly)."""
    section = section_name(cls)
    kwargs = dict(given)
    for field in option_fields(cls):
        if field.name not in values:
            raise ConfigError(f"config key {section}.{field.name} is missing from default.ini")
        dotted = f"{section}.{field.name}"
        kwargs[field.name] = _coerce(dotted, values[field.name], field_type(cls, field.name))
    unknown = sorted(set(values) - set(kwargs))
    if unknown:
        valid = sorted(f"{section}.{f.name}" for f in option_fields(cls))
        raise _unknown_key("config", f"{section}.{unknown[0]}", valid)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------- validation


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def option_name(cls: type, key: str) -> str:
    """How the guide's command line names a field: its flag, else ``section.key``."""
    flag = next(f.metadata.get("flag") for f in dataclasses.fields(cls) if f.name == key)
    return flag or f"{section_name(cls)}.{key}"


def _check_choices(section: Any) -> None:
    cls = type(section)
    for field in option_fields(cls):
        choices = field.metadata.get("choices")
        value = getattr(section, field.name)
        _require(
            choices is None or value in choices,
            f"{option_name(cls, field.name)} must be one of {', '.join(choices or ())}, "
            f"got {value!r}",
        )


def validate(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` for values the trainer or the collapse cannot honour."""
    for attr in section_types():
        _check_choices(getattr(cfg, attr))
    _validate_train(cfg.train, cfg.vec)
    _validate_vec(cfg.vec)
    _validate_collapse(cfg.collapse)


def _validate_train(t: TrainConfig, v: VecConfig) -> None:
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
    _require(t.rollout_threads >= 0, "train.rollout_threads must be >= 0")
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
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        f"train.device must be auto, cpu or cuda[:N], got {t.device!r}",
    )


def _validate_vec(v: VecConfig) -> None:
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


def _validate_collapse(c: CollapseConfig) -> None:
    try:
        validate_threshold(c.threshold)
        if c.target is not None:
            validate_target(c.target, "collapse.target")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _require(
        c.target is None or c.threshold == 0,
        "give either collapse.threshold (--collapse TAU) or collapse.target, not both",
    )
    _require(c.epoch >= 0, f"--collapse-epoch must be >= 0, got {c.epoch}")
    _require(c.until is None or c.until >= 1, f"--collapse-until must be >= 1, got {c.until}")
    _require(c.episodes is None or c.episodes >= 0, "collapse.episodes must be >= 0")
    for name in (
        "lstm_rounds",
        "fidelity_batch",
        "fidelity_steps",
        "calibration_batch",
        "calibration_steps",
    ):
        _require(getattr(c, name) >= 1, f"collapse.{name} must be at least 1")
    if c.criterion == "data":
        _require(
            c.flatten_colours == "positions",
            "--flatten-colours pooled applies to the weights criterion only",
        )
        _require(
            c.lstm_criterion == "units", "--lstm-criterion applies to the weights criterion only"
        )


# ------------------------------------------------------------------------------------- loading


def merged_settings(
    env_name: str, config_dir: Path = CONFIG_DIR, extra_files: Sequence[Path] = ()
) -> tuple[dict[str, dict[str, str]], list[Path]]:
    """The merged ini texts of ``env_name`` (``{section: {key: text}}``) and the files read."""
    check_env_name(env_name)
    files = [*config_files(env_name, config_dir), *map(Path, extra_files)]
    return merge_files(files), files


def load_config(
    env_name: str,
    overrides: Mapping[str, str] | None = None,
    *,
    backend: str = "serial",
    config_dir: Path = CONFIG_DIR,
    extra_files: Sequence[Path] = (),
) -> RunConfig:
    """The validated configuration of ``env_name``: its ini files merged, then ``extra_files``
    (a user's ``--config``), then ``overrides`` (``{"train.batch_size": "2048"}``)."""
    merged, files = merged_settings(env_name, config_dir, extra_files)
    apply_overrides(merged, overrides or {})
    sections = {
        attr: build_section(
            cls, merged[section_name(cls)], **({"backend": backend} if cls is VecConfig else {})
        )
        for attr, cls in section_types().items()
    }
    env = {k: parse_value(text) for k, text in merged["env"].items()}
    cfg = RunConfig(env_name=env_name, env=env, sources=tuple(map(str, files)), **sections)
    validate(cfg)
    return cfg


def shown_value(text: str, annotation: Any = None) -> str:
    """An ini value as ``--help`` shows it (``10_000`` → ``10000``, ``True`` → ``True``); a
    text field shows its text (the tracker ``none`` is a word, not ``None``)."""
    value = parse_value(text)
    return text.strip() if annotation is str or isinstance(value, str) else repr(value)


def load_section(
    cls: type,
    overrides: Mapping[str, str] | None = None,
    *,
    env_name: str | None = None,
    config_dir: Path = CONFIG_DIR,
    extra_files: Sequence[Path] = (),
) -> Any:
    """One validated section (e.g. :class:`CollapseConfig` for the standalone collapse, which
    needs no env): the base file, the env's files when ``env_name`` is given, ``extra_files``,
    then ``overrides``."""
    if env_name is not None:
        merged, _ = merged_settings(env_name, config_dir, extra_files)
    else:
        merged = merge_files([*config_files_base(config_dir), *map(Path, extra_files)])
    apply_overrides(merged, overrides or {})
    section = build_section(cls, merged[section_name(cls)])
    _check_choices(section)
    if cls is CollapseConfig:
        _validate_collapse(section)
    return section


def config_files_base(config_dir: Path = CONFIG_DIR) -> list[Path]:
    """Just ``default.ini`` (the settings before any env is known)."""
    base = config_dir / "default.ini"
    if not base.is_file():
        raise ConfigError(f"missing base config file {base}")
    return [base]
