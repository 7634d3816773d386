"""`python -m astra`: the `astra` command without an installed entry point (a machine that cannot pip install)."""

import sys

from astra.cli import main

sys.exit(main())
