"""``python -m matrixgame.cli`` (what ``torchrun`` launches)."""

import sys

from matrixgame.cli import main

sys.exit(main())
