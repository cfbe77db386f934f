"""Checking that a state dict fits a model before loading it, with a message that says how it does not."""
from __future__ import annotations

import torch


def state_dict_mismatches(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                          source: str = "checkpoint") -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``state`` against ``expected`` (empty: it fits).

    ``source`` names the side ``state`` came from in the shape messages.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{key}: {source} {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
                   for key in sorted(set(expected) & set(state)) if state[key].shape != expected[key].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if items:
            shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
            problems.append(f"{label}: {shown}")
    return problems
