"""Reading weight files safely, and checking that a state dict fits a model, with messages that say what is wrong."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


def read_weights_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a ``ValueError`` naming the file when it fails.

    No arbitrary code is unpickled. The message never suggests ``weights_only=False``
    (what torch's own message advises): a file that needs it is not a weights file. Used for
    h3r checkpoints (:func:`h3r.checkpoints.load_checkpoint`), ``--pretrained`` files and the
    authors' ``model.pth``.
    """
    if path.stat().st_size == 0:
        raise ValueError(f"{path} cannot be read: it is empty (0 bytes): it was never written completely")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} cannot be read: it holds something other than tensors and plain values, so it "
                         f"is corrupted or not a weights file") from None
    except Exception as error:  # noqa: BLE001 - damaged archives fail in many ways (RuntimeError, IndexError ...)
        raise ValueError(f"{path} cannot be read: it is truncated or corrupted ({_load_failure(error)})") from None


def _load_failure(error: BaseException) -> str:
    """A short reason for a failed ``torch.load``: the error's type and first line, no advice about its options."""
    first_sentence = (str(error).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")[:160]
    if not first_sentence or "weights_only" in first_sentence:
        return type(error).__name__
    return f"{type(error).__name__}: {first_sentence}"


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
