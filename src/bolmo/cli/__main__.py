"""`python -m bolmo.cli ...`, the form torchrun launches: `torchrun --nproc-per-node N -m bolmo.cli train ...`."""

import sys

from bolmo.cli import main

sys.exit(main())
