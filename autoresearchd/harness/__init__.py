"""The torch side of the fixed harness that every train.py relies on, imported by train.py alone.

:mod:`autoresearchd.harness.data` loads a prepared track onto the training device and
samples batches; :mod:`autoresearchd.harness.evaluation` computes ``evaluate_bpb``, the one
metric every run reports. Both import torch, so nothing else in the package imports this
package: the torch-free half (tracks, tokenizer, preparation) is :mod:`autoresearchd.tracks`.
Importing this package itself loads nothing, so a probe can check cheaply that an
interpreter has the harness installed.
"""
