"""`python -m megagoku ...` (what torchrun -m, deepspeed --module and srun start)."""

import sys

from megagoku.launch.lifeline import die_with_launcher

die_with_launcher()  # first: a worker of `megagoku launch` must not outlive it (a no-op otherwise)

from megagoku.cli import main  # noqa: E402 - after the lifeline, before the heavy imports

sys.exit(main())
