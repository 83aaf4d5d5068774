"""Files: atomic writes, run-folder names, record schemas, checkpoints, fibers files and the
importers of upstream PufferLib runs and policies, and the export formats of a policy
(PufferLib's C runtime: weights + generated C; TorchScript)."""
