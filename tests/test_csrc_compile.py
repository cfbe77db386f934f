"""The CUDA C sources compile for Ampere and Hopper, and instantiate exactly the kernels the CuPy
launchers ask NVRTC for. Needs ``nvcc`` (no GPU): every ``csrc/*.cu`` goes through
``nvcc -ptx -std=c++17 -arch=sm_XX`` with ``-DH3R_EXPLICIT_INSTANTIATION``, which turns on the
explicit instantiation lines at the end of each file, so every template instance is compiled,
and with the same spec defines (``h3r_kernels.spec.c_define_options()``) the CuPy loader passes.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from h3r_kernels import spec
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
                *spec.c_define_options(), f"-I{CSRC}", "--Werror", "all-warnings", str(CSRC / source), "-o", str(target),
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


def _sources_text() -> str:
    return "".join((CSRC / name).read_text() for name in (_module.HEADER, *_module.SOURCES))


def test_the_sources_take_the_spec_constants_from_the_loader():
    """No spec constant is (re)defined in csrc/; every one the sources use is in spec.c_defines(),
    which the loader passes to NVRTC, and the launchers' constants are the spec's."""
    text = _sources_text()
    defines = spec.c_defines()
    written = set(re.findall(r"#define (H3R_\w+)", text))
    assert not written & set(defines), f"defined in csrc/ instead of h3r_kernels/spec.py: {written & set(defines)}"
    used = set(re.findall(r"\b(H3R_(?:ROUNDING|LOSS|REDUCTION|METHOD|WEIGHTING)_\w+|H3R_BLOCK|H3R_MAX_MAPS_PER_BLOCK"
                          r"|H3R_REDUCE_CHUNK|H3R_LOADS_IN_FLIGHT)\b", text))
    assert used <= set(defines), f"used in csrc/ but not declared by the spec: {used - set(defines)}"
    options = _module.compile_options(CSRC)
    assert all(f"-D{name}={value}" in options for name, value in defines.items())
    from h3r_kernels.cuda import loss

    assert (_module.BLOCK, _module.MAX_MAPS_PER_BLOCK, loss.REDUCE_CHUNK) == (
        spec.BLOCK, spec.MAX_MAPS_PER_BLOCK, spec.REDUCE_CHUNK)


# Options the launchers handle before the kernels (reduction: which sums are added, and how scaled).
NOT_IN_KERNELS = {spec.Reduction}
# Codes the kernels handle in the final `else` of a test for the others (not named there).
ELSE_BRANCHES = {(spec.Rounding, "NEAREST"), (spec.Loss, "MSE"), (spec.Weighting, "SOFTMAX")}


@pytest.mark.parametrize("option", [o for o in spec.OPTIONS.values() if o not in NOT_IN_KERNELS], ids=lambda o: o.__name__)
def test_every_spec_option_is_implemented_in_the_sources(option):
    """A member added to a spec enum fails here until the CUDA C kernels test for its code."""
    text = re.sub(r"#if !defined.*?#endif", "", _sources_text(), flags=re.S)  # the guards do not count
    prefix = f"H3R_{option.__name__.upper()}_"
    missing = [member.name for member in option if not re.search(rf"\b{prefix}{member.name}\b", text)]
    missing = [name for name in missing if (option, name) not in ELSE_BRANCHES]
    assert not missing, f"csrc/ does not implement {option.__name__} {missing}"
