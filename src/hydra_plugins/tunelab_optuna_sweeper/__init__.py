"""``hydra/sweeper=tunelab_optuna``: a Hydra sweeper on current Optuna (4.x, 5.x).

Studies persist in a storage (SQLite or a journal file) and several sweep processes can share one;
trials can be pruned from inside training (``tunelab.pruning``).
"""
