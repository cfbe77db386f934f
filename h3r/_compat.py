"""What differs between the supported Pythons (3.10 and later).

``tomllib`` is in the standard library from Python 3.11; on 3.10 its predecessor ``tomli``
(the same API, installed by ``pip install h3r`` there) takes its place.
"""
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]
