"""``python -m h3r`` = the ``h3r`` command (see :mod:`h3r.cli`)."""
import sys

from h3r.cli import main

sys.exit(main())
