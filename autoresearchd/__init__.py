"""autoresearchd: a daemon for collaborative, SETI@home-style machine-learning research.

Each volunteer machine runs one worker per GPU. Workers improve a shared ``train.py``
by proposing hyperparameter mutations, running them under a fixed time budget and
publishing every result to a collective memory.
"""

__version__ = "0.1.0"
