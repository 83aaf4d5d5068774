"""Environments: an open registry of names (Atari, classic control, PufferLib Ocean) and how to
make each one, given its settings."""
