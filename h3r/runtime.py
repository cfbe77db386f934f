"""Where and how a run executes: the device, mixed precision, seeds and RNG states, the process group.

Shared by training and evaluation. Reproducibility: the augmentation of item ``i`` in epoch
``e`` is seeded by ``(seed, e, i)`` (:class:`h3r.crops.CropDataset`); the randomized rounding
of global step ``t`` on process ``r`` by :func:`rounding_seed`; :func:`rng_state` and
:func:`restore_rng_state` carry the generators across a checkpoint.
"""
from __future__ import annotations

import os
import platform
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

if TYPE_CHECKING:  # annotations only: no import of the configuration (and the codecs behind it)
    from h3r.configs import TrainConfig

__all__ = ["resolve_device", "autocast", "Processes", "join_process_group", "process_device", "seed_everything",
           "seed_worker", "rounding_seed", "rng_state", "restore_rng_state"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else the CPU; other names as ``torch.device``.

    A CUDA device always gets an index (``"cuda"`` → ``cuda:<current device>``), which
    ``torch.cuda.set_device`` needs.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device: {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: {name!r} is not supported here; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {name!r} requested but MPS is not available here (use --device cpu)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device: {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def autocast(device: torch.device, amp: str, cache_enabled: bool = True):
    """``torch.autocast`` for ``amp`` in {"bf16", "fp16"} on CUDA; a no-op context otherwise.

    ``cache_enabled=False`` inside CUDA-graph capture (no cast weights kept across the capture).
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None and device.type == "cuda",
                          cache_enabled=cache_enabled)


# ----------------------------------------------------------------------------------------------
# Processes


@dataclass
class Processes:
    """Where this process sits in a ``torchrun`` job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def join_process_group(device: torch.device) -> Processes:
    """Join the process group that ``torchrun`` (or a test's spawner) describes in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return Processes(rank=rank, world_size=world_size, local_rank=local_rank, started_group=started)


def process_device(config: TrainConfig, processes: Processes) -> torch.device:
    device = resolve_device(config.device)
    if device.type == "cuda" and processes.world_size > 1:
        device = torch.device("cuda", processes.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.amp != "none" and device.type != "cuda":
        raise ValueError(f"amp: mixed precision ({config.amp}) needs a CUDA device; this run uses {device}")
    return device


# ----------------------------------------------------------------------------------------------
# Seeds and RNG states


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and ``random`` follow torch's per-worker seed.

    torch seeds worker ``w`` with ``base_seed + w``, ``base_seed`` drawn from the (seeded)
    main-process generator, so worker seeds are reproducible; the augmentation itself does
    not use them (it is seeded per item).
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def rounding_seed(seed: int, step: int, rank: int) -> int:
    """The 32-bit seed of the randomized rounding at global ``step`` on process ``rank``."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python ``random`` states, in types ``torch.load(weights_only=True)`` reads."""
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"algorithm": algorithm, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["algorithm"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ----------------------------------------------------------------------------------------------
# Facts recorded with results (the benchmark report, the study)

CHECKOUT = Path(__file__).resolve().parents[1]  # the repository, when h3r runs from a source checkout


def command_output(command: Sequence[str], cwd: Optional[Path] = None) -> Optional[str]:
    """The stripped standard output of ``command``, or None when it fails or prints nothing."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def git_commit(short: bool = False, mark_dirty: bool = False) -> str:
    """``git rev-parse HEAD`` of the source checkout h3r runs from, or ``"unknown"`` (no git, a copy
    without ``.git``, or an installed wheel, whose folder may sit inside some other repository).

    ``mark_dirty`` appends ``-dirty`` when tracked files differ from that commit.
    """
    if not (CHECKOUT / ".git").exists():
        return "unknown"
    commit = command_output(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=CHECKOUT)
    if commit is None:
        return "unknown"
    if mark_dirty and command_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=CHECKOUT):
        commit += "-dirty"
    return commit


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
