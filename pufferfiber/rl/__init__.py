"""Reinforcement learning: rollout, the PPO trainer, its callbacks and metric sinks, evaluation,
and the training hooks (symmetry breaking, ReDo)."""
