"""``python -m hesslib run CONFIG.yaml --out DIR`` (see :mod:`hesslib.cli`)."""

import sys

from .cli import main

sys.exit(main())
