"""``python -m finesam ...`` runs the command line (so that ``torchrun -m finesam train ...`` works)."""

import sys

from .cli import main

sys.exit(main())
