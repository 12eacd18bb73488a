"""A plugin that exits the interpreter while it is imported (case 107)."""

import sys

sys.exit(3)
