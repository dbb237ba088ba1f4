"""``python -m batchcore ...`` runs the ``batchcore`` command."""

import sys

from batchcore.processors.cli import main

sys.exit(main())
