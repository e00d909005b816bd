"""`python -m megagoku ...` (what torchrun -m, deepspeed --module and srun start)."""

import sys

from megagoku.cli import main

sys.exit(main())
