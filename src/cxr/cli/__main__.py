"""`python -m cxr.cli ...` (what torchrun launches): the `cxr` command."""

import sys

from cxr.cli import main

sys.exit(main())
