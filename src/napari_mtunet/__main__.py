"""``python -m napari_mtunet`` is the ``mtunet`` command."""

import sys

from .cli import main

sys.exit(main())
