"""What runs after each epoch's PPO update: training hooks and checkpointing.

A *hook* is any callable ``hook(ctx: EpochContext) -> dict[str, float] | None`` (symmetry
breaking, ReDo, a monitor); the numbers it returns become User Stats. A hook may also have

* ``name``: the key of its state in ``trainer_state.pt`` (default: its class name; a second hook
  of the same name gets ``#2``), so ``--resume`` gives each hook its own state back by name;
* ``state_dict()`` / ``load_state_dict(state)``: plain-Python state to carry across a resume;
* ``check(policy)``: validate its settings before any training.

:class:`Checkpointer` is the callback that saves ``model_EEEEEE.pt`` and ``trainer_state.pt``
every ``checkpoint_interval`` epochs and at the end (the metric sinks are in
:mod:`pufferfiber.rl.sinks`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pufferfiber.core.policy import Policy
from pufferfiber.io import checkpoints
from pufferfiber.io.runfiles import checkpoint_name
from pufferfiber.io.schemas import TrainerState

HOOK_STEPS = 64  # rollout steps per env shown to hooks as EpochContext.observations


@dataclass
class EpochContext:
    """What a per-epoch hook sees (after the update of ``epoch``).

    ``observations`` is a read-only view of this epoch's rollout: ``[num_envs, T, *obs]``
    sequences (the first ``HOOK_STEPS`` steps of every env), e.g. for measuring activations.
    """

    policy: Policy
    optimizer: torch.optim.Optimizer
    epoch: int
    global_step: int
    run_dir: Path
    observations: torch.Tensor | None = None


Hook = Callable[[EpochContext], "dict[str, float] | None"]


def hook_name(hook: Any) -> str:
    """The name a hook's state is saved under: its ``name`` attribute, else its class name."""
    name = getattr(hook, "name", None)
    return name if isinstance(name, str) and name else type(hook).__name__


def named_hooks(hooks: Iterable[Hook]) -> dict[str, Hook]:
    """The hooks by unique name, in their order (``SymmetryBreaker``, ``SymmetryBreaker#2``)."""
    named: dict[str, Hook] = {}
    for hook in hooks:
        base = name = hook_name(hook)
        n = 1
        while name in named:
            n += 1
            name = f"{base}#{n}"
        named[name] = hook
    return named


def hook_states(hooks: Mapping[str, Hook]) -> dict[str, Any]:
    """``{name: state}`` of the hooks that have state (for ``trainer_state.pt``)."""
    return {name: hook.state_dict() for name, hook in hooks.items() if hasattr(hook, "state_dict")}


def restore_hook_states(hooks: Iterable[Hook], states: Mapping[str, Any] | None) -> list[str]:
    """Give each hook the state saved under its name; returns the names restored.

    Files written before hook states had names key them ``#0``, ``#1``... by position: those
    go to the hook at that position. A saved state no hook claims is reported on stderr.
    """
    states = dict(states or {})
    restored = []
    for i, (name, hook) in enumerate(named_hooks(hooks).items()):
        key = name if name in states else f"#{i}"
        state = states.pop(key, None)
        if state is not None and hasattr(hook, "load_state_dict"):
            hook.load_state_dict(state)
            restored.append(name)
    for name in states:
        print(f"warning: no training hook named {name!r} to take its saved state", file=sys.stderr)
    return restored


class Checkpointer:
    """Saves the policy (``model_EEEEEE.pt``) and the optimizer + counters + hook states
    (``trainer_state.pt``) every ``interval`` epochs and at the last epoch."""

    def __init__(self, run_dir: Path, interval: int) -> None:
        self.run_dir, self.interval = Path(run_dir), interval
        self.saved: list[Path] = []
        self.saved_epoch: int | None = None

    def due(self, epoch: int, end_epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch >= end_epoch

    def path(self, epoch: int) -> Path:
        return self.run_dir / checkpoint_name(epoch)

    def save(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        *,
        epoch: int,
        global_step: int,
        end_epoch: int,
        env: str,
        config: dict[str, Any],
        meta: dict[str, Any],
        hooks: Mapping[str, Hook],
    ) -> Path:
        """Checkpoint of ``epoch`` + optimizer state (both written atomically).

        The two files always agree: if the trainer state cannot be written (e.g. the disk is
        full), a checkpoint this call created is removed again and the error is raised.
        """
        # Looked up at call time so that tests can replace it (fault injection).

        target = self.path(epoch)
        existed = target.exists()
        path = checkpoints.save_checkpoint(
            target,
            policy,
            epoch=epoch,
            global_step=global_step,
            env=env,
            config=config,
            meta=meta,
        )
        try:
            checkpoints.save_trainer_state(
                self.run_dir,
                TrainerState(
                    optimizer=optimizer.state_dict(),
                    epoch=epoch,
                    global_step=global_step,
                    checkpoint=path.name,
                    end_epoch=end_epoch,
                    hooks=hook_states(hooks),  # e.g. symmetry breaking's unit ages
                ),
            )
        except BaseException:
            if not existed:
                path.unlink(missing_ok=True)
            raise
        if path not in self.saved:
            self.saved.append(path)
        self.saved_epoch = epoch
        return path
