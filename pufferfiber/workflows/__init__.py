"""The use cases that both the command line and the sweep call: train, resume,
collapse-and-retrain, collapse a checkpoint into its folder, the fibers timeline."""
