"""h3r: training and evaluation of heatmap-regression landmark models with H3R.

The floors, from the ground up: ``data``, ``models``, ``metrics`` and ``transforms``
import nothing above them; ``codecs`` is the only caller of :mod:`h3r_kernels`' ops (the
on-device augmentation, ``augment`` and ``warp_triton``, uses its Triton probe and device guard);
``train`` and ``evaluate`` use the codecs; ``cli`` drives everything.
"""

__version__ = "0.1.0"
