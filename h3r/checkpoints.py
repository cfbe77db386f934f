"""The checkpoint format: what ``h3r train`` writes (``last.pt``, ``best.pt``), how, and how it is read back.

A checkpoint is a ``torch.save`` of plain values and tensors (``torch.load(weights_only=True)``
reads it) marked with :data:`CHECKPOINT_FORMAT` and a SHA-256 checksum of its contents. It is
written atomically (:func:`save_atomic`): a crash leaves either the old file or the new one.
:func:`reconcile_run_folder` makes a run folder agree with the checkpoint a run (re)starts from.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from h3r.models.weights import read_weights_file

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "CheckpointWriteError", "load_checkpoint", "checkpoint_checksum",
           "save_atomic", "write_atomic", "reconcile_run_folder"]

CHECKPOINT_FORMAT = "h3r-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, truncated, corrupted or not written by ``h3r train``."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, ...); the previous file is unchanged, no temporary file is left."""


# ----------------------------------------------------------------------------------------------
# Reading


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by ``h3r train`` (``last.pt``, ``best.pt``), loaded on the CPU."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give a .pt file or a run folder holding last.pt)")
    try:
        checkpoint = read_weights_file(path)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by h3r train (no format '{CHECKPOINT_FORMAT}')")
    stored = checkpoint.pop("checksum", None)  # checkpoints written before checksums have none
    if stored is not None and stored != checkpoint_checksum(checkpoint):
        raise CheckpointError(f"checkpoint {path} is corrupted: its contents differ from the checksum stored when "
                              f"it was written")
    checkpoint["path"] = str(path)
    return checkpoint


def checkpoint_checksum(payload: Any) -> dict[str, str]:
    """SHA-256 over every tensor's bytes (with dtype and shape) and every plain value of a checkpoint.

    Written into the checkpoint by ``h3r train`` and compared by :func:`load_checkpoint`, so
    damage that still unpickles (flipped bytes inside tensor data) is detected. Lists and
    tuples hash alike; mapping keys in a fixed order.
    """
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous()
            digest.update(f"tensor {data.dtype} {tuple(data.shape)}:".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode() + b":")
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
                digest.update(b",")
            digest.update(b"]")
        else:
            digest.update(repr(value).encode() + b";")

    feed({key: value for key, value in payload.items() if key not in ("checksum", "path")})
    return {"algorithm": "sha256", "value": digest.hexdigest()}


# ----------------------------------------------------------------------------------------------
# Writing


def save_atomic(payload: Any, path: Path) -> None:
    """``torch.save`` to ``path`` so that a crash leaves either the old file or the new one (:func:`write_atomic`)."""
    write_atomic(path, lambda handle: torch.save(payload, handle))


def write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """``write(handle)`` into ``path`` so that a crash leaves either the old file or the new one.

    Writes a temporary file in the same folder, flushes and fsyncs it, renames it over
    ``path`` (``os.replace`` is atomic) and fsyncs the folder. On any failure the temporary
    file is removed; an ``OSError`` (disk full, ...) becomes one :class:`CheckpointWriteError`
    sentence that says the previous file is unchanged.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)  # a partial file would keep filling the disk
        if not isinstance(error, OSError):
            raise
        previous = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
        failure = CheckpointWriteError(f"could not write {path}: {error.strerror or error}; {previous}")
        failure.errno = error.errno
        raise failure from None
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def reconcile_run_folder(out: Path, checkpoint: Optional[dict[str, Any]], say: Callable[[str], None]) -> None:
    """Make the run folder agree with the checkpoint a run (re)starts from; process 0, before training.

    An epoch ends with three writes, in this order: ``last.pt`` (the record of the run: its
    ``history`` and ``best``), ``best.pt`` when the epoch improved (a copy of that state),
    then the epoch's line in ``metrics.jsonl``. A crash between two of them leaves a folder
    that this repairs: ``metrics.jsonl`` is rewritten from the checkpoint's history (no
    duplicated, missing or torn lines), and when the checkpoint names its own epoch as the
    best, ``best.pt`` becomes a copy of it. A fresh run (no checkpoint) starts an empty
    ``metrics.jsonl``.
    """
    history = checkpoint["history"] if checkpoint is not None else []
    lines = "".join(json.dumps(record) + "\n" for record in history)
    write_atomic(out / "metrics.jsonl", lambda handle: handle.write(lines.encode()))
    if checkpoint is None or checkpoint["best"]["epoch"] is None:
        return
    best_epoch, source, best_path = checkpoint["best"]["epoch"], Path(checkpoint["path"]), out / "best.pt"
    if best_path.exists() and best_path.resolve() == source.resolve():
        return
    try:
        stored = load_checkpoint(best_path)["epoch"] if best_path.exists() else None
    except CheckpointError:
        stored = None
    if stored == best_epoch:
        return
    if best_epoch == checkpoint["epoch"]:  # the crash came between last.pt and best.pt: last.pt is the best state
        with open(source, "rb") as original:
            write_atomic(best_path, lambda handle: shutil.copyfileobj(original, handle))
        say(f"repaired {best_path}: it now holds epoch {best_epoch}, the best epoch that {source.name} records")
    else:
        say(f"warning: {best_path} {'is missing or unreadable' if stored is None else f'holds epoch {stored}'} but "
            f"{source.name} records epoch {best_epoch} as the best; the next improvement rewrites it")
