"""The CUDA C sources compile for Ampere and Hopper, and instantiate exactly the kernels the CuPy
launchers ask NVRTC for. Needs ``nvcc`` (no GPU): every ``csrc/*.cu`` goes through
``nvcc -ptx -std=c++17 -arch=sm_XX`` with ``-DH3R_EXPLICIT_INSTANTIATION``, which turns on the
explicit instantiation lines at the end of each file, so every template instance is compiled.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from h3r_kernels.cuda import _module

CSRC = Path(__file__).resolve().parent.parent / "csrc"
ARCHS = ("sm_80", "sm_90")
NVCC = shutil.which("nvcc") or next(
    (path for path in ("/usr/local/cuda/bin/nvcc",) if os.access(path, os.X_OK)), None
)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH or at /usr/local/cuda/bin/nvcc")

# Itanium-mangled template arguments of the kernels -> the C++ spelling of the name expressions.
MANGLED_TYPES = {"f": "float", "d": "double", "N3h3r4HalfE": "h3r::Half", "N3h3r8BFloat16E": "h3r::BFloat16"}
ENTRY = re.compile(r"\.entry\s+_Z(\d+)(\w+)")


def kernel_names(ptx: str) -> set[str]:
    """``kernel<type>`` (single-type templates) or ``kernel`` for every ``.entry`` of a PTX file."""
    names = set()
    for length, rest in ENTRY.findall(ptx):
        name, args = rest[: int(length)], rest[int(length):]
        template = re.match(r"I(" + "|".join(map(re.escape, MANGLED_TYPES)) + r")E", args)
        assert template or not args.startswith("I"), f"unexpected template kernel {name}{args[:20]}..."
        names.add(f"{name}<{MANGLED_TYPES[template.group(1)]}>" if template else name)
    return names


@pytest.fixture(scope="module")
def ptx_files(tmp_path_factory):
    """(source, arch) -> (nvcc return code, diagnostics, PTX text), compiled once per module."""
    out = tmp_path_factory.mktemp("ptx")
    results = {}
    for source in sorted(_module.SOURCES):
        for arch in ARCHS:
            target = out / f"{source}.{arch}.ptx"
            command = [
                NVCC, "-ptx", "-std=c++17", f"-arch={arch}", "-DH3R_EXPLICIT_INSTANTIATION",
                f"-I{CSRC}", "--Werror", "all-warnings", str(CSRC / source), "-o", str(target),
            ]
            run = subprocess.run(command, capture_output=True, text=True)
            results[source, arch] = (run.returncode, run.stderr, target.read_text() if target.exists() else "")
    return results


def test_every_source_file_is_known_to_the_loader():
    assert sorted(path.name for path in CSRC.glob("*.cu")) == sorted(_module.SOURCES)
    assert (CSRC / _module.HEADER).is_file()


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(_module.SOURCES))
def test_compiles_without_warnings(ptx_files, source, arch):
    returncode, diagnostics, ptx = ptx_files[source, arch]
    assert returncode == 0, f"nvcc failed on {source} for {arch}:\n{diagnostics}"
    assert ".entry" in ptx


@needs_nvcc
@pytest.mark.parametrize("source", sorted(_module.SOURCES))
def test_instantiations_match_the_name_expressions(ptx_files, source):
    returncode, diagnostics, ptx = ptx_files[source, ARCHS[-1]]
    assert returncode == 0, diagnostics
    assert kernel_names(ptx) == set(_module.name_expressions(source))


def test_kernel_names_reads_mangled_entries():
    ptx = (
        ".visible .entry _Z13encode_kernelIN3h3r4HalfEEvPT_PKf(\n.visible .entry _Z8my_fnameIdEvPT_(\n"
        ".visible .entry _Z5countPyPKfx(\n"
    )
    assert kernel_names(ptx) == {"encode_kernel<h3r::Half>", "my_fname<double>", "count"}


def _defines(*files: str) -> dict[str, int]:
    text = "".join((CSRC / name).read_text() for name in files)
    return {name: int(value) for name, value in re.findall(r"#define (H3R_\w+) (\d+)\n", text)}


def test_launcher_constants_match_the_sources():
    from h3r_kernels.cuda import decode, loss

    defines = _defines(_module.HEADER, "loss.cu", "decode.cu")
    assert defines["H3R_BLOCK"] == _module.BLOCK
    assert defines["H3R_MAX_MAPS_PER_BLOCK"] == _module.MAX_MAPS_PER_BLOCK
    chunk = re.search(r"#define H3R_REDUCE_CHUNK \((\d+) \* H3R_BLOCK\)", (CSRC / "loss.cu").read_text())
    assert chunk and int(chunk.group(1)) * _module.BLOCK == loss.REDUCE_CHUNK
    for table, prefix in ((_module.ROUNDINGS, "ROUNDING"), (loss.LOSSES, "LOSS"), (decode.METHODS, "METHOD")):
        assert {f"H3R_{prefix}_{name.upper()}": code for name, code in table.items()} == {
            name: code for name, code in defines.items() if name.startswith(f"H3R_{prefix}_")
        }
