"""Proposers turn a parent train.py into a fresh candidate, one search strategy per module.

:mod:`~autoresearchd.proposers.base` holds the :class:`Proposer` Protocol and the types every
strategy shares; :mod:`~autoresearchd.proposers.auto` builds the one the config names. The
strategies: ``portfolio`` (the default), ``perturb``, ``tpe`` (with ``history``, the reading
of results that ``tpe`` and ``portfolio`` learn from), ``hypotheses``, ``command`` (an
external research agent) and ``mixed``.
"""
