"""``python -m vra_gateway``: see :mod:`vra_gateway.cli`."""

import sys

from .cli import main

sys.exit(main())
