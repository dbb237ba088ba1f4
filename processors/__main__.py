"""``python -m processors ...`` runs the ``batchcore`` command."""

import sys

from .cli import main

sys.exit(main())
