"""Experiments over many runs: the sweep on Ray Tune, run and sweep reports, plots, statistics."""
