"""The agent's network: PufferLib 2.0's recurrent policy, rebuilt from its sizes.

Two families share one class, :class:`Policy`:

* ``cnn`` (Atari): Conv(1→c1, k8 s4) ReLU → Conv(c1→c2, k4 s2) ReLU → Conv(c2→c3, k3 s1)
  ReLU → Flatten → Linear(c3·H·W → h) ReLU → LSTM(h → k) → actor Linear(k → A),
  critic Linear(k → 1). Observations are uint8 and scaled by 1/255.
* ``mlp`` (vector observations): Flatten → Linear → ReLU (one or more) → LSTM → heads.

Every size is a field of :class:`Architecture`, so a collapsed network (fewer channels, fewer
Linear or LSTM units) is the same class with smaller numbers. Parameter names are PufferLib
2.0's (``policy.policy.network.0.weight``, ``policy.policy.actor.*``,
``policy.policy.value_fn.*``, ``policy.recurrent.*``), which keeps state dicts interchangeable
with upstream checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

LSTMState = tuple[torch.Tensor, torch.Tensor]

# PufferLib 2.0's Atari convolutions: (kernel, stride) of each conv layer.
ATARI_KERNELS: tuple[tuple[int, int], ...] = ((8, 4), (4, 2), (3, 1))


@dataclass(frozen=True)
class Architecture:
    """All the sizes that define a :class:`Policy`.

    Attributes:
        kind: ``"cnn"`` (image observations, uint8) or ``"mlp"`` (vector observations).
        obs_shape: shape of one observation, e.g. ``(1, 105, 80)`` or ``(4,)``.
        n_actions: number of discrete actions (actor head width).
        channels: output channels of each conv layer (``cnn`` only).
        kernels: ``(kernel, stride)`` of each conv layer (``cnn`` only).
        hidden: widths of the Linear layers between flatten and the LSTM.
        lstm: LSTM hidden size.
    """

    kind: str
    obs_shape: tuple[int, ...]
    n_actions: int
    channels: tuple[int, ...] = ()
    kernels: tuple[tuple[int, int], ...] = ()
    hidden: tuple[int, ...] = (512,)
    lstm: int = 512

    def __post_init__(self) -> None:
        if self.kind not in ("cnn", "mlp"):
            raise ValueError(f"architecture kind must be 'cnn' or 'mlp', not {self.kind!r}")
        if self.kind == "cnn" and len(self.channels) != len(self.kernels):
            raise ValueError("cnn architecture needs one (kernel, stride) per conv layer")
        if self.kind == "mlp" and self.channels:
            raise ValueError("mlp architecture has no conv channels")
        if not self.hidden:
            raise ValueError("architecture needs at least one Linear layer before the LSTM")
        sizes = (*self.channels, *self.hidden, self.lstm, self.n_actions)
        if any(int(s) < 1 for s in sizes):
            raise ValueError(f"every layer needs at least one unit, got {sizes}")

    @classmethod
    def atari(
        cls,
        n_actions: int,
        obs_shape: tuple[int, ...] = (1, 105, 80),
        channels: tuple[int, ...] = (32, 64, 64),
        hidden: int = 512,
        lstm: int = 512,
    ) -> Architecture:
        """PufferLib 2.0's Atari network (3,948,202 parameters for 9 actions)."""
        return cls(
            "cnn", tuple(obs_shape), n_actions, tuple(channels), ATARI_KERNELS, (hidden,), lstm
        )

    @classmethod
    def mlp(
        cls, obs_size: int, n_actions: int, hidden: Sequence[int] = (64,), lstm: int = 64
    ) -> Architecture:
        """An MLP encoder followed by the LSTM, for vector observations."""
        return cls("mlp", (int(obs_size),), n_actions, (), (), tuple(hidden), lstm)

    def conv_output_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` after the last conv layer (``cnn`` only)."""
        _, h, w = self.obs_shape
        for k, s in self.kernels:
            h, w = (h - k) // s + 1, (w - k) // s + 1
        return self.channels[-1], h, w

    def flat_size(self) -> int:
        """Width of the flattened encoder input to the first Linear layer."""
        if self.kind == "cnn":
            return math.prod(self.conv_output_shape())
        return math.prod(self.obs_shape)

    def replace(self, **changes: Any) -> Architecture:
        """A copy with some sizes changed (used by collapse)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, safe for ``torch.load(weights_only=True)`` and JSON."""
        d = dataclasses.asdict(self)
        d["obs_shape"] = list(self.obs_shape)
        d["channels"] = list(self.channels)
        d["kernels"] = [list(k) for k in self.kernels]
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Architecture:
        return cls(
            kind=str(d["kind"]),
            obs_shape=tuple(int(x) for x in d["obs_shape"]),
            n_actions=int(d["n_actions"]),
            channels=tuple(int(x) for x in d.get("channels", ())),
            kernels=tuple((int(k), int(s)) for k, s in d.get("kernels", ())),
            hidden=tuple(int(x) for x in d["hidden"]),
            lstm=int(d["lstm"]),
        )

    def parameter_count(self) -> int:
        """Number of parameters of the policy with these sizes (no model needed)."""
        n = 0
        c_in = self.obs_shape[0] if self.kind == "cnn" else 0
        for c, (k, _) in zip(self.channels, self.kernels, strict=True):
            n += c * c_in * k * k + c
            c_in = c
        d_in = self.flat_size()
        for h in self.hidden:
            n += h * d_in + h
            d_in = h
        n += 4 * self.lstm * (d_in + self.lstm) + 8 * self.lstm
        n += (self.lstm + 1) * self.n_actions + self.lstm + 1
        return n


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights, constant bias (PufferLib / CleanRL initialisation)."""
    nn.init.orthogonal_(layer.weight, std)  # type: ignore[arg-type]
    nn.init.constant_(layer.bias, bias)  # type: ignore[arg-type]
    return layer


class _Encoder(nn.Module):
    """Everything before the LSTM plus the two heads (PufferLib's ``Convolutional``)."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if arch.kind == "cnn":
            c_in = arch.obs_shape[0]
            for c, (k, s) in zip(arch.channels, arch.kernels, strict=True):
                layers += [layer_init(nn.Conv2d(c_in, c, k, stride=s)), nn.ReLU()]
                c_in = c
        layers.append(nn.Flatten())
        d_in = arch.flat_size()
        for h in arch.hidden:
            layers += [layer_init(nn.Linear(d_in, h)), nn.ReLU()]
            d_in = h
        self.network = nn.Sequential(*layers)
        self.actor = layer_init(nn.Linear(arch.lstm, arch.n_actions), std=0.01)
        self.value_fn = layer_init(nn.Linear(arch.lstm, 1), std=1.0)


class _Recurrent(nn.Module):
    """The encoder wrapped with an LSTM (PufferLib's ``LSTMWrapper``)."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.policy = _Encoder(arch)
        self.recurrent = nn.LSTM(arch.hidden[-1], arch.lstm)
        for name, param in self.recurrent.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0.0)
            else:
                nn.init.orthogonal_(param, 1.0)


class Policy(nn.Module):
    """Recurrent actor-critic with PufferLib 2.0's parameter names.

    ``forward(obs, state)`` takes observations shaped ``[B, *obs_shape]`` (one step) or
    ``[B, T, *obs_shape]`` (a sequence) and an LSTM state ``(h, c)`` each ``[1, B, lstm]``
    (``None`` = zeros). It returns ``(logits, value, state)`` with logits ``[B, A]`` /
    ``[B, T, A]`` and value ``[B]`` / ``[B, T]``.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.policy = _Recurrent(arch)
        self._scale = 1.0 / 255.0 if arch.kind == "cnn" else 1.0

    # Named views of the parts, so other modules never index into the Sequential.
    @property
    def network(self) -> nn.Sequential:
        return cast(nn.Sequential, self.policy.policy.network)

    @property
    def lstm(self) -> nn.LSTM:
        return cast(nn.LSTM, self.policy.recurrent)

    @property
    def actor(self) -> nn.Linear:
        return cast(nn.Linear, self.policy.policy.actor)

    @property
    def value_fn(self) -> nn.Linear:
        return cast(nn.Linear, self.policy.policy.value_fn)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> LSTMState:
        zeros = torch.zeros(1, batch, self.arch.lstm, device=device)
        return zeros, zeros.clone()

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Encoder features ``[N, hidden[-1]]`` of a flat batch of observations."""
        return self.network(obs.float() * self._scale)

    def forward(
        self, obs: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, LSTMState]:
        n_obs_dims = len(self.arch.obs_shape)
        if tuple(obs.shape[-n_obs_dims:]) != self.arch.obs_shape:
            raise ValueError(
                f"observation shape {tuple(obs.shape)} does not end with {self.arch.obs_shape}"
            )
        single_step = obs.dim() == n_obs_dims + 1
        if single_step:
            obs = obs.unsqueeze(1)
        b, t = obs.shape[:2]
        hidden = self.encode(obs.reshape(b * t, *self.arch.obs_shape))
        hidden = hidden.reshape(b, t, -1).transpose(0, 1)  # LSTM wants [T, B, H]
        out, new_state = self.lstm(hidden, state)
        out = out.transpose(0, 1)  # [B, T, lstm]
        logits = self.actor(out)
        value = self.value_fn(out).squeeze(-1)
        if single_step:
            logits, value = logits[:, 0], value[:, 0]
        return logits, value, (new_state[0], new_state[1])

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def observation_batch(arch: Architecture, n: int, seed: int = 0) -> torch.Tensor:
    """Random observations of the right dtype and range (tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    if arch.kind == "cnn":
        return torch.from_numpy(rng.integers(0, 256, (n, *arch.obs_shape), dtype=np.uint8))
    return torch.from_numpy(rng.uniform(-1, 1, (n, *arch.obs_shape)).astype(np.float32))
