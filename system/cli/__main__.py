"""`python -m system.cli` runs `qfleet`."""

import sys

from system.cli import main

sys.exit(main())
