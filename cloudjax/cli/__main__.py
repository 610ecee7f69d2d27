"""``python -m cloudjax.cli``: the ``cloudjax`` command."""

import sys

from cloudjax.cli import main

sys.exit(main())
