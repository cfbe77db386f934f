"""h3r_kernels: fast ops for Heatmap Regression via Randomized Rounding (Yu & Tao, TPAMI 2021).

Conventions, used by every op:

* keypoints are ``(B, K, 2)`` tensors of ``(x, y)`` in **heatmap pixel units**; ``x`` is the
  column, ``y`` the row; the cell at row ``r``, column ``c`` has its centre at ``(x=c, y=r)``;
* an input-pixel coordinate is the heatmap coordinate times the stride (no half-pixel offset);
* ``visible`` is an optional ``(B, K)`` mask: bool, or integer/floating with non-zero meaning
  visible (NaN: invisible);
* maps are ``(B, K, H, W)``, float32, float16 or bfloat16 (float64 for gradcheck), computed
  in float32 (float64 maps in float64).

Ops: :func:`encode`, :func:`heatmap_loss`, :func:`decode`; their ``nn.Module`` forms
:class:`HeatmapEncoder`, :class:`HeatmapLoss`, :class:`HeatmapDecoder`; :func:`backends` says
which backends exist here (``reference``, ``triton``, ``cuda``) and why not.
"""
from .api import decode, encode, heatmap_loss
from .backends import backends
from .modules import HeatmapDecoder, HeatmapEncoder, HeatmapLoss

__all__ = ["encode", "heatmap_loss", "decode", "backends", "HeatmapEncoder", "HeatmapLoss", "HeatmapDecoder"]
__version__ = "0.1.0"
