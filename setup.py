"""h3r: Heatmap Regression via Randomized Rounding — kernels (h3r_kernels) and training (h3r).

torch is a requirement but is never pinned to a CUDA build: install the torch you want first
(``scripts/bootstrap.sh`` installs the CPU build on machines without one, and keeps a GPU
machine's preinstalled torch/triton/cupy).
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
TRAIN = ["pillow>=9.1", "scipy>=1.9", "h5py>=3.7", "pycocotools>=2.0.6", "tqdm>=4.60", "matplotlib>=3.6"]


class BuildWithCudaSources(build_py):
    """Ship csrc/*.cu and *.cuh inside the package (h3r_kernels/_csrc/) for non-editable installs."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "h3r_kernels" / "_csrc"
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted((ROOT / "csrc").glob("*.cu*")):
            shutil.copy2(source, target / source.name)


setup(
    name="h3r",
    version="0.1.0",
    description="Heatmap Regression via Randomized Rounding: fused GPU ops and a training/evaluation module",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["h3r_kernels", "h3r_kernels.*", "h3r", "h3r.*", "bench"]),
    package_data={"h3r": ["configs/*.toml"]},
    install_requires=["torch>=2.4", "numpy>=1.22"],
    extras_require={
        "train": TRAIN,
        "triton": ["triton>=3.2"],
        "cuda12": ["cupy-cuda12x>=13"],
        "cuda13": ["cupy-cuda13x>=14"],
        "test": TRAIN + ["triton==3.6.0", "pytest>=8", "pytest-benchmark>=4", "pytest-xdist>=3"],
    },
    entry_points={"console_scripts": ["h3r = h3r.cli:main"]},
    cmdclass={"build_py": BuildWithCudaSources},
)
