"""The facts of a run: device, driver, library versions, git commit, date."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

import h3r_kernels
from h3r_kernels.backends import interpreting


def _version(*distributions: str) -> Optional[str]:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _command_output(command: Sequence[str], cwd: Optional[Path] = None) -> Optional[str]:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


CHECKOUT = Path(__file__).resolve().parents[2]  # the repository, when h3r runs from a source checkout


def git_commit() -> str:
    """``git rev-parse HEAD`` of the source checkout h3r runs from, or ``"unknown"`` (no git, a copy
    without ``.git``, or an installed wheel, whose folder may sit inside some other repository)."""
    if not (CHECKOUT / ".git").exists():
        return "unknown"
    return _command_output(["git", "rev-parse", "HEAD"], cwd=CHECKOUT) or "unknown"


def run_facts(device: torch.device, commit: str) -> dict:
    """Device, driver, library versions, git commit, date."""
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "device": device.type,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "cupy": _version("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x"),
        "numpy": np.__version__,
        "h3r_kernels": h3r_kernels.__version__,
        "backends": h3r_kernels.backends(),
        "triton_interpreter": interpreting(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        facts["device_name"] = torch.cuda.get_device_name(index)
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(index)]
        facts["driver"] = _command_output(query) or "unknown"
    else:
        facts["device_name"] = facts["cpu"]
        facts["driver"] = "n/a"
    return facts
