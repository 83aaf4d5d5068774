"""The compression core works without the training stack (issue: "a core without PufferLib").

A fresh interpreter blocks pufferlib and every other training-stack package in ``sys.modules``
(an import of a name mapped to ``None`` raises ``ImportError``), then imports ``pufferfiber``,
every module of ``pufferfiber.core`` and the facade's compression names, and collapses a
planted network with both criteria. A stray import of pufferlib anywhere on that path fails it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What `pip install pufferfiber` (the core) does not install.
TRAINING_STACK = (
    "pufferlib",
    "gymnasium",
    "ale_py",
    "ray",
    "rich",
    "matplotlib",
    "pandas",
    "pyarrow",
    "cv2",
    "tensorboard",
)

SCRIPT = """
import importlib, pkgutil, sys
BLOCKED = {blocked!r}
for name in BLOCKED:
    sys.modules[name] = None  # `import name` now raises ImportError
try:
    import pufferlib  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the block does not work")

import torch
from torch import nn

import pufferfiber as pf
import pufferfiber.core

for info in pkgutil.iter_modules(pufferfiber.core.__path__):
    importlib.import_module(f"pufferfiber.core.{{info.name}}")
import pufferfiber.io.fibersfile  # saving fibers needs no training stack either

for name in ("adapt", "AdaptedNetwork", "AdaptError", "CRITERIA", "FiberCriterion",
             "WeightCriterion", "DataCriterion", "make_criterion", "Architecture", "Policy",
             "build_graph", "Fibration", "compute_fibers", "compute_opfibers",
             "collapse_policy", "Divergence", "output_divergence", "save_fibers", "load_fibers"):
    getattr(pf, name)


class Agent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.network = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.lstm = nn.LSTM(16, 8)
        self.actor = nn.Linear(8, 3)
        self.critic = nn.Linear(8, 1)


torch.manual_seed(0)
agent = Agent()
with torch.no_grad():  # unit 2 copies unit 0 in the encoder and in every LSTM gate
    agent.network[0].weight[2] = agent.network[0].weight[0]
    agent.network[0].bias[2] = agent.network[0].bias[0]
    for g in range(4):
        for p in (agent.lstm.weight_ih_l0, agent.lstm.weight_hh_l0,
                  agent.lstm.bias_ih_l0, agent.lstm.bias_hh_l0):
            p[g * 8 + 2] = p[g * 8]
net = pf.adapt(agent, encoder="network", recurrent="lstm",
               heads={{"actor": "actor", "value": "critic"}})
frames = torch.randn(4, 12, 6)
small = pf.WeightCriterion(threshold=0.0).fit_transform(net)
div = pf.output_divergence(net, small, frames)
assert type(small) is Agent and small.lstm.hidden_size == 7, small
assert div.kl < 1e-9 and div.value_mae < 1e-5, div
data = pf.DataCriterion(threshold=0.0).fit_transform(net, torch.randn(8, 16, 6))
assert pf.output_divergence(net, data, frames).kl < 1e-9

loaded = [n for n in BLOCKED if sys.modules.get(n) is not None]
assert not loaded, loaded
print("collapsed without the training stack:", div)
"""


@pytest.mark.slow
def test_core_imports_and_collapses_with_pufferlib_blocked() -> None:
    code = SCRIPT.format(blocked=TRAINING_STACK)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "collapsed without the training stack" in out.stdout
