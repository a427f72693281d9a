"""python -m gmgan (also what torchrun runs: torchrun --nproc_per_node 2 -m gmgan train ...)."""
import sys

from .cli import main

sys.exit(main())
