"""The one build step pyproject.toml cannot declare: ship ``csrc/*.cu`` and ``*.cuh`` inside the
package as ``h3r_kernels/_csrc/``, where the CUDA C backend finds them in a non-editable install
(an editable install reads ``csrc/`` in place). Everything else is in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildWithCudaSources(build_py):
    """build_py, then copy csrc/*.cu* into ``<build>/h3r_kernels/_csrc/``."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "h3r_kernels" / "_csrc"
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted((ROOT / "csrc").glob("*.cu*")):
            shutil.copy2(source, target / source.name)


setup(cmdclass={"build_py": BuildWithCudaSources})
