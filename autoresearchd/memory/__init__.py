"""Collective memory backends: where workers read the best and publish results.

``protocol`` defines what a worker needs; ``sqlite`` is the embedded solo-mode backend.
``open_memory`` picks one from the config.
"""
