"""The facts of a run: device, driver, library versions, git commit, date."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Optional

import numpy as np
import torch

import h3r_kernels
from h3r.runtime import command_output, cpu_name, git_commit  # noqa: F401 (git_commit: re-exported)
from h3r_kernels.backends import interpreting


def _version(*distributions: str) -> Optional[str]:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def run_facts(device: torch.device, commit: str) -> dict:
    """Device, driver, library versions, git commit, date."""
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "device": device.type,
        "cpu": cpu_name(),
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
        facts["driver"] = command_output(query) or "unknown"
    else:
        facts["device_name"] = facts["cpu"]
        facts["driver"] = "n/a"
    return facts
