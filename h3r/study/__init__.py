"""The low-resolution study: accuracy against heatmap stride at a fixed input, H3R against baselines.

``h3r study`` (or :func:`run_study`) runs, on one input size and backbone:

* **Part A, quantization only** (:mod:`h3r.study.quantization`): every codec encodes the
  test split's ground truth and decodes it back, at every stride; no network, seconds.
* **Part B, trained** (:mod:`h3r.study.runner`): one ``h3r train`` per
  ``(dataset, codec, stride, seed)`` cell, each scored with every decoder of its codec.

and writes ``study.json``, ``study.md`` and ``study.png`` (:mod:`h3r.study.report`).
What is compared is declared once in :mod:`h3r.study.presets`.
"""
from h3r.study.presets import METHODS, PRESETS, Method, Preset
from h3r.study.runner import run_study

__all__ = ["METHODS", "PRESETS", "Method", "Preset", "run_study"]
