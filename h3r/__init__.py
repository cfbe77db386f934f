"""h3r: training and evaluation of heatmap-regression landmark models with H3R.

The floors, from the ground up: ``data``, ``models``, ``metrics`` and ``transforms``
import nothing above them; ``codecs`` is the only bridge to :mod:`h3r_kernels`;
``train`` and ``evaluate`` use the codecs; ``cli`` drives everything.
"""

__version__ = "0.1.0"
