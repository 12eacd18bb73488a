"""Built-in ops: every module in this folder registers its entries on import."""

from .._autoload import import_submodules

import_submodules(__name__, __path__)
