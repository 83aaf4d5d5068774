"""A policy as a TorchScript file that plain torch loads (no pufferfiber needed).

:func:`scripted` rebuilds the policy from torch modules only (the encoder ``Sequential``, the
``nn.LSTM`` / ``nn.GRU``, the two heads) and scripts it. The module's contract:

``forward(obs, state) -> (logits, value, state)`` with ``obs`` ``[B, *obs_shape]`` (one step of
``B`` agents; uint8 pixels or float32, scaled as in training), ``state`` a list of
``[1, B, hidden]`` tensors (LSTM ``[h, c]``, GRU ``[h]``; an empty list: zeros), ``logits``
``[B, n_actions]``, ``value`` ``[B]``. ``initial_state(B)`` gives the zero state. The file
also records ``obs_shape``, ``n_actions``, ``hidden`` and ``rnn`` as attributes.
"""

from __future__ import annotations

import copy
import io
from typing import cast

import torch
from torch import nn

from pufferfiber.core.policy import Policy


class _ScriptedPolicy(nn.Module):
    """What both recurrent kinds share: plain copies of the policy's modules and its shape.

    The subclasses differ only where TorchScript needs a static type: the recurrent state.
    """

    def __init__(self, policy: Policy, rnn_kind: str) -> None:
        super().__init__()
        self.network = copy.deepcopy(policy.network)
        self.rnn = copy.deepcopy(policy.recurrent)
        self.actor = copy.deepcopy(policy.actor)
        self.value_fn = copy.deepcopy(policy.value_fn)
        self.input_scale = float(policy.input_scale)
        self.obs_shape = list(policy.arch.obs_shape)
        self.n_actions = int(policy.arch.n_actions)
        self.hidden = int(policy.arch.lstm)
        self.rnn_kind = rnn_kind


class _LSTMPolicy(_ScriptedPolicy):
    def __init__(self, policy: Policy) -> None:
        super().__init__(policy, "lstm")

    @torch.jit.export
    def initial_state(self, batch: int) -> list[torch.Tensor]:
        zeros = torch.zeros(1, batch, self.hidden)
        return [zeros, zeros.clone()]

    def forward(
        self, obs: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if len(state) == 0:
            state = self.initial_state(obs.shape[0])
        x = self.network(obs.float() * self.input_scale)
        out, (h, c) = self.rnn(x.unsqueeze(0), (state[0], state[1]))
        hidden = out[0]
        return self.actor(hidden), self.value_fn(hidden).squeeze(-1), [h, c]


class _GRUPolicy(_ScriptedPolicy):
    def __init__(self, policy: Policy) -> None:
        super().__init__(policy, "gru")

    @torch.jit.export
    def initial_state(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(1, batch, self.hidden)]

    def forward(
        self, obs: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if len(state) == 0:
            state = self.initial_state(obs.shape[0])
        x = self.network(obs.float() * self.input_scale)
        out, h = self.rnn(x.unsqueeze(0), state[0])
        hidden = out[0]
        return self.actor(hidden), self.value_fn(hidden).squeeze(-1), [h]


def scripted(policy: Policy) -> torch.jit.ScriptModule:
    """The policy as a scripted module on the CPU, in eval mode (see the module docstring)."""
    module: nn.Module = (_LSTMPolicy if policy.arch.rnn == "lstm" else _GRUPolicy)(policy)
    return cast(torch.jit.ScriptModule, torch.jit.script(module.cpu().eval()))


def scripted_bytes(policy: Policy) -> bytes:
    """The ``torch.jit.save`` file of :func:`scripted` (written atomically by the caller)."""
    buf = io.BytesIO()
    torch.jit.save(scripted(policy), buf)
    return buf.getvalue()
