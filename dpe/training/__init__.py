"""What ``python -m dpe.train`` and ``python -m dpe.train_global`` share.

- ``recipes``: how each architecture trains (Adam settings, losses by stage, start, batches);
- ``samples``: training tiles, patch sampling, the validation set and its score;
- ``runtime``: checkpoints and exported weights, weight averaging, data-parallel processes,
  stopping on a signal;
- ``cli``: command-line flags generated from a config dataclass and its fields' help.
"""
