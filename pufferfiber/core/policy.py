"""The agent's network: PufferLib 2.0's recurrent policy, rebuilt from its sizes.

Two families share one class, :class:`Policy`:

* ``cnn`` (Atari): Conv(1→c1, k8 s4) ReLU → Conv(c1→c2, k4 s2) ReLU → Conv(c2→c3, k3 s1)
  ReLU → Flatten → Linear(c3·H·W → h) ReLU → LSTM(h → k) → actor Linear(k → A),
  critic Linear(k → 1). Observations are uint8 and scaled by 1/255.
* ``mlp`` (vector observations): Flatten → Linear → ReLU (one or more) → LSTM → heads.
  ``Architecture.activation = "gelu"`` puts GELU after the Linear layers instead: PufferLib
  3.0's Ocean ``Default`` policy, imported by :mod:`pufferfiber.io.pufferlib3`. Only ReLU
  networks can be collapsed (the fibers' fold factors need a positively homogeneous
  activation; :func:`~pufferfiber.core.graph.build_graph` refuses GELU in one line).

The recurrent layer is PufferLib's LSTM by default, or a GRU (``Architecture.rnn = "gru"``,
``--policy.rnn gru``); its width is ``Architecture.lstm`` either way.

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

RecurrentState = tuple[torch.Tensor, ...]

# The recurrent layer types (``Architecture.rnn``) and how many state tensors each carries.
RNN_MODULES: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}
STATE_TENSORS = {"lstm": 2, "gru": 1}
RNN_KINDS = tuple(RNN_MODULES)

# The activation after each encoder layer (``Architecture.activation``): ReLU everywhere in
# PufferLib 2.0; GELU after the Linear layer of PufferLib 3.0's ``Default`` (its nn.GELU()
# is the exact, erf form, which nn.GELU() here is too).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}

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
        hidden: widths of the Linear layers between flatten and the recurrent layer.
        lstm: width (hidden size) of the recurrent layer, LSTM or GRU (the name is the one
            stored in checkpoints).
        rnn: the recurrent layer, one of :data:`RNN_KINDS` (``"lstm"``, PufferLib's; or
            ``"gru"``).
        activation: after each Linear layer of the encoder, one of :data:`ACTIVATIONS`
            (``"relu"``; ``"gelu"`` only for ``mlp``, as PufferLib 3.0's ``Default``).
    """

    kind: str
    obs_shape: tuple[int, ...]
    n_actions: int
    channels: tuple[int, ...] = ()
    kernels: tuple[tuple[int, int], ...] = ()
    hidden: tuple[int, ...] = (512,)
    lstm: int = 512
    rnn: str = "lstm"
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.kind not in ("cnn", "mlp"):
            raise ValueError(f"architecture kind must be 'cnn' or 'mlp', not {self.kind!r}")
        if self.rnn not in RNN_KINDS:
            raise ValueError(f"rnn must be one of {', '.join(RNN_KINDS)}, not {self.rnn!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}"
            )
        if self.kind == "cnn" and self.activation != "relu":
            # no upstream policy has GELU after convolutions; keep the cnn family ReLU-only
            raise ValueError("cnn architecture uses ReLU (activation 'gelu' is for mlp only)")
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
        rnn: str = "lstm",
    ) -> Architecture:
        """PufferLib 2.0's Atari network (3,948,202 parameters for 9 actions)."""
        return cls(
            "cnn",
            tuple(obs_shape),
            n_actions,
            tuple(channels),
            ATARI_KERNELS,
            (hidden,),
            lstm,
            rnn,
        )

    @classmethod
    def mlp(
        cls,
        obs_size: int,
        n_actions: int,
        hidden: Sequence[int] = (64,),
        lstm: int = 64,
        rnn: str = "lstm",
        activation: str = "relu",
    ) -> Architecture:
        """An MLP encoder followed by the recurrent layer, for vector observations."""
        return cls("mlp", (int(obs_size),), n_actions, (), (), tuple(hidden), lstm, rnn, activation)

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
            rnn=str(d.get("rnn", "lstm")),  # checkpoints before the GRU option: LSTM
            activation=str(d.get("activation", "relu")),  # records before GELU: ReLU
        )

    def parameter_count(self) -> int:
        """Number of parameters of the policy with these sizes, counted on its modules built
        on the meta device (no memory, no initialisation cost)."""
        with torch.device("meta"):
            return Policy(self).parameter_count()


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
        act = ACTIVATIONS[arch.activation]
        for h in arch.hidden:
            layers += [layer_init(nn.Linear(d_in, h)), act()]
            d_in = h
        self.network = nn.Sequential(*layers)
        self.actor = layer_init(nn.Linear(arch.lstm, arch.n_actions), std=0.01)
        self.value_fn = layer_init(nn.Linear(arch.lstm, 1), std=1.0)


class _Recurrent(nn.Module):
    """The encoder wrapped with a recurrent layer (PufferLib's ``LSTMWrapper``)."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.policy = _Encoder(arch)
        self.recurrent = RNN_MODULES[arch.rnn](arch.hidden[-1], arch.lstm)
        for name, param in self.recurrent.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0.0)
            else:
                nn.init.orthogonal_(param, 1.0)


class Policy(nn.Module):
    """Recurrent actor-critic with PufferLib 2.0's parameter names.

    PufferLib's contract: :meth:`encode_observations` (observations → encoder features) and
    :meth:`decode_actions` (recurrent outputs → logits and value), with the recurrence between
    them owned here. The recurrent state is a tuple of ``[1, B, lstm]`` tensors (LSTM ``(h, c)``,
    GRU ``(h,)``); :meth:`initial_state` gives zeros.

    * :meth:`step` runs one step of ``B`` environments (the rollout);
    * :meth:`unroll` runs ``[B, T]`` sequences, zeroing the state after every step whose
      ``done`` is set (the PPO update);
    * ``forward(obs, state)`` takes ``[B, *obs_shape]`` (one step) or ``[B, T, *obs_shape]``
      (a sequence, no episode boundary) and returns ``(logits, value, state)`` with logits
      ``[B, A]`` / ``[B, T, A]`` and value ``[B]`` / ``[B, T]`` (``state=None``: zeros).

    ``encoder_bf16`` runs the encoder (convs + Linear) under bfloat16 autocast; the recurrent
    layer and the heads stay float32.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.policy = _Recurrent(arch)
        self.input_scale = 1.0 / 255.0 if arch.kind == "cnn" else 1.0

    # Named views of the parts, so other modules never index into the Sequential.
    @property
    def network(self) -> nn.Sequential:
        return cast(nn.Sequential, self.policy.policy.network)

    @property
    def recurrent(self) -> nn.RNNBase:
        """The recurrent layer (``nn.LSTM`` or ``nn.GRU``, see ``Architecture.rnn``)."""
        return cast(nn.RNNBase, self.policy.recurrent)

    @property
    def actor(self) -> nn.Linear:
        return cast(nn.Linear, self.policy.policy.actor)

    @property
    def value_fn(self) -> nn.Linear:
        return cast(nn.Linear, self.policy.policy.value_fn)

    @property
    def heads(self) -> dict[str, nn.Linear]:
        """The output layers by label."""
        return {"actor": self.actor, "value": self.value_fn}

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> RecurrentState:
        """Zeros: one ``[1, batch, lstm]`` tensor per state tensor of the recurrent layer."""
        shape = (1, batch, self.arch.lstm)
        return tuple(torch.zeros(shape, device=device) for _ in range(STATE_TENSORS[self.arch.rnn]))

    def encode_observations(self, obs: torch.Tensor, encoder_bf16: bool = False) -> torch.Tensor:
        """Encoder features ``[N, hidden[-1]]`` (float32) of a flat batch of observations."""
        with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=encoder_bf16):
            hidden = self.network(obs.float() * self.input_scale)
        return hidden.float()

    def decode_actions(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [..., A], value [...])`` of recurrent outputs ``[..., lstm]``."""
        return self.actor(hidden), self.value_fn(hidden).squeeze(-1)

    def _recur(self, x: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """The recurrent layer on ``x`` ``[T, B, F]`` from ``state`` (torch's own state form:
        a tensor for the GRU, a tuple for the LSTM)."""
        out, new = self.recurrent(x, state[0] if len(state) == 1 else state)
        return out, tuple(new) if isinstance(new, tuple) else (new,)

    def _masked(self, x: torch.Tensor, state: RecurrentState, dones: torch.Tensor) -> torch.Tensor:
        """Outputs ``[T, B, H]`` with the state zeroed after every step whose done is set.

        Every sequence runs in one fused call; those with a boundary inside (a done at the last
        step changes nothing inside the sequence) are then stepped through time and written
        over their fused outputs. Few have one (0.1 % of pong's at PufferLib's reference
        settings). The re-stepping costs ~7-10 % of pong's update there
        (``benchmarks/update_levers.py``, lever ``no-mask``): the price of never leaking one
        episode's state into the next."""
        loop = dones[:, :-1].bool().any(dim=1).nonzero().squeeze(1)
        if len(loop) == len(dones):
            return self._stepwise(x, state, dones)
        out = self._recur(x, state)[0]
        if len(loop) == 0:
            return out
        redone = self._stepwise(x[:, loop], tuple(s[:, loop] for s in state), dones[loop])
        return out.index_copy(1, loop, redone)

    def _stepwise(
        self, x: torch.Tensor, state: RecurrentState, dones: torch.Tensor
    ) -> torch.Tensor:
        steps = []
        for k in range(x.shape[0]):
            out, state = self._recur(x[k : k + 1], state)
            keep = (1.0 - dones[:, k].to(out.dtype))[None, :, None]
            state = tuple(s * keep for s in state)
            steps.append(out)
        return torch.cat(steps, dim=0)

    def step(
        self, obs: torch.Tensor, state: RecurrentState | None, encoder_bf16: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """One step: ``(logits [B, A], values [B], new state)`` of observations ``[B, *obs]``."""
        state = self.initial_state(obs.shape[0], obs.device) if state is None else state
        hidden = self.encode_observations(obs, encoder_bf16)
        out, new_state = self._recur(hidden[None], state)
        logits, value = self.decode_actions(out[0])
        return logits, value, new_state

    def unroll(
        self,
        obs: torch.Tensor,
        state: RecurrentState | None,
        dones: torch.Tensor,
        encoder_bf16: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, T, A], values [B, T])`` of sequences ``obs`` ``[B, T, *obs]`` from
        ``state``; the state is zeroed after every step whose ``dones[b, t]`` is set, as during
        the rollout."""
        b, t = obs.shape[:2]
        state = self.initial_state(b, obs.device) if state is None else state
        hidden = self.encode_observations(obs.reshape(b * t, *obs.shape[2:]), encoder_bf16)
        out = self._masked(hidden.reshape(b, t, -1).transpose(0, 1), state, dones)
        return self.decode_actions(out.transpose(0, 1))

    def forward(
        self, obs: torch.Tensor, state: RecurrentState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        n_obs_dims = len(self.arch.obs_shape)
        if tuple(obs.shape[-n_obs_dims:]) != self.arch.obs_shape:
            raise ValueError(
                f"observation shape {tuple(obs.shape)} does not end with {self.arch.obs_shape}"
            )
        if obs.dim() == n_obs_dims + 1:
            return self.step(obs, state)
        b, t = obs.shape[:2]
        state = self.initial_state(b, obs.device) if state is None else state
        hidden = self.encode_observations(obs.reshape(b * t, *self.arch.obs_shape))
        out, new_state = self._recur(hidden.reshape(b, t, -1).transpose(0, 1), state)
        logits, value = self.decode_actions(out.transpose(0, 1))
        return logits, value, new_state

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def observation_batch(arch: Architecture, n: int, seed: int = 0) -> torch.Tensor:
    """Random observations of the right dtype and range (tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    if arch.kind == "cnn":
        return torch.from_numpy(rng.integers(0, 256, (n, *arch.obs_shape), dtype=np.uint8))
    return torch.from_numpy(rng.uniform(-1, 1, (n, *arch.obs_shape)).astype(np.float32))
