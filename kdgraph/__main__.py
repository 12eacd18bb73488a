"""`python -m kdgraph ...` (and `accelerate launch -m kdgraph run ...`)."""

import sys

from .cli import main

sys.exit(main())
