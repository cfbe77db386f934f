"""Packaging: the wheel built from this checkout installs and runs, and the sources suit the oldest
supported Python.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation --no-index``, with the
setuptools of the test environment) from a copy of the checkout's files, so the checkout gets no
``build/`` or ``*.egg-info``. It is installed into a fresh virtual environment without pip that
sees the test environment's site-packages (torch, numpy ...) through a ``.pth`` file, never the
checkout: there ``h3r`` and ``h3r_kernels`` come from the wheel alone. Nothing is downloaded.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from h3r._compat import tomllib

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SKIPPED_PARTS = {".git", ".venv", "build", "dist", "runs", "out", "__pycache__", ".pytest_cache", ".benchmarks"}


def _checkout_files() -> list[Path]:
    """The checkout's files, relative: git's tracked and untracked-but-not-ignored ones, else a walk."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
        return [Path(name) for name in listed if name and (ROOT / name).is_file()]
    return [path.relative_to(ROOT) for path in ROOT.rglob("*") if path.is_file()
            and not SKIPPED_PARTS & set(path.relative_to(ROOT).parts) and not path.name.endswith(".egg-info")]


def _run(command: list, **options) -> subprocess.CompletedProcess:
    """Run ``command`` outside the checkout, without PYTHONPATH; fail with its output if it fails."""
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, env=environment,
                          timeout=300, **options)
    assert done.returncode == 0, f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for relative in _checkout_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, source / relative)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "--wheel-dir", dist, source], cwd=dist)
    built, = dist.glob("h3r-*.whl")
    return built


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"h3r", "h3r_kernels", wheel.name.split("-py")[0] + ".dist-info"}  # no bench, no tests
    assert "bench/__init__.py" not in names and not any(name.startswith("bench/") for name in names)
    assert "h3r/benchmark/__main__.py" in names and "h3r/data/synthetic/__init__.py" in names

    cuda_sources = {path.name for path in (ROOT / "csrc").glob("*.cu*")}
    assert any(name.endswith(".cu") for name in cuda_sources)
    assert {name.split("/", 2)[2] for name in names if name.startswith("h3r_kernels/_csrc/")} == cuda_sources
    configs = {path.name for path in (ROOT / "h3r" / "configs").glob("*.toml")}
    assert configs and {name for name in configs if f"h3r/configs/{name}" in names} == configs

    metadata = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/METADATA").decode()
    assert f"Requires-Python: {PYPROJECT['project']['requires-python']}" in metadata
    assert 'Requires-Dist: tomli>=1.1; python_version < "3.11"' in metadata
    assert re.search(r'^Requires-Dist: pyyaml\b.*extra == "train"', metadata, re.M)
    assert re.search(r'^Requires-Dist: hypothesis\b.*extra == "test"', metadata, re.M)


def test_wheel_installs_and_runs(wheel, tmp_path):
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(environment)
    bin_dir = environment / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / Path(sys.executable).name
    if not python.exists():
        python = bin_dir / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The test environment's packages (torch ...), after the venv's own: the wheel's h3r comes first,
    # and the .pth files there (an editable install of the checkout) are not processed.
    parents = [path for path in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(path).is_dir()]
    (purelib / "test-environment.pth").write_text("\n".join(dict.fromkeys(parents)) + "\n")
    # --ignore-installed: never touch the h3r the test environment may have installed (it is visible here).
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
          "--ignore-installed", wheel], cwd=tmp_path)

    helped = _run([bin_dir / "h3r", "train", "--help"], cwd=tmp_path).stdout
    assert "usage: h3r train" in helped and "--codec" in helped

    probe = """
import json, h3r, h3r_kernels, h3r.benchmark.cli
from h3r.configs import load_config
from h3r_kernels.cuda._module import find_source_dir
print(json.dumps({"h3r": h3r.__file__, "h3r_kernels": h3r_kernels.__file__, "csrc": str(find_source_dir()),
                  "wflw_epochs": load_config("wflw").epochs}))
"""
    found = json.loads(_run([python, "-c", probe], cwd=tmp_path).stdout.strip().splitlines()[-1])
    for name in ("h3r", "h3r_kernels", "csrc"):
        assert Path(found[name]).resolve().is_relative_to(purelib.resolve()), (name, found[name])
    assert Path(found["csrc"]).name == "_csrc" and found["wflw_epochs"] > 0

    usage = _run([python, "-m", "h3r.benchmark", "--help"], cwd=tmp_path).stdout
    assert usage.startswith("usage: python -m h3r.benchmark")


# --------------------------------------------------------------------------- the oldest supported Python


def _oldest_python() -> tuple[str, str | None]:
    """``requires-python``'s floor, e.g. ``"3.10"``, and an interpreter of that version if one runs here."""
    floor = re.fullmatch(r">=\s*(\d+\.\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    candidates = [shutil.which(f"python{floor}"), f"/usr/bin/python{floor}", f"/usr/local/bin/python{floor}",
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{floor}.*/bin/python{floor}")))]
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip() == floor:
            return floor, candidate
    return floor, None


def test_sources_suit_the_oldest_supported_python():
    """On ``requires-python``'s floor every source file compiles, and the config files parse through the
    ``tomli`` fallback (pip's vendored copy stands in for ``tomli`` where it is not installed)."""
    floor, python = _oldest_python()
    if python is None:
        pytest.skip(f"no Python {floor} interpreter here")
    folders = ("h3r", "h3r_kernels", "bench", "tests", "scripts")
    files = [str(ROOT / path) for path in _checkout_files()
             if path.suffix == ".py" and (path.parts[0] in folders or len(path.parts) == 1)]
    assert len(files) > 20
    check = """
import sys
for path in sys.argv[1:]:
    with open(path, "rb") as handle:
        compile(handle.read(), path, "exec", dont_inherit=True)
print("compiled", len(sys.argv) - 1)
"""
    assert _run([python, "-c", check, *files]).stdout.strip() == f"compiled {len(files)}"

    configs = """
import sys
if sys.version_info < (3, 11):
    try:
        import tomli
    except ImportError:
        from pip._vendor import tomli
        sys.modules["tomli"] = tomli
import pathlib
from h3r._compat import tomllib
assert tomllib.__name__.split(".")[-1] == ("tomllib" if sys.version_info >= (3, 11) else "tomli"), tomllib
paths = sorted(pathlib.Path("h3r/configs").glob("*.toml"))  # h3r.configs itself needs torch: read the files
loaded = [tomllib.loads(path.read_text(encoding="utf-8")) for path in paths]
print(len([values for values in loaded if "dataset" in values or "input_size" in values]), len(paths))
"""
    counts = _run([python, "-c", configs], cwd=ROOT).stdout.split()
    assert counts[0] == counts[1] and int(counts[0]) > 0
