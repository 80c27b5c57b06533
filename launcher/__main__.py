"""`python -m ringdist_launch ...`: the same as the `ringdist-launch` command."""

import sys

from .cli import main

sys.exit(main())
