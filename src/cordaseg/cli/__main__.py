"""``python -m cordaseg.cli``: the console script, as ``torchrun -m cordaseg.cli`` starts it."""

import sys

from cordaseg.cli import main

sys.exit(main())
