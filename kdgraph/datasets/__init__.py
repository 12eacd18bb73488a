"""Built-in datasets: every module in this folder registers its entries on import.

A dataset is a class registered with ``@register_dataset(NAME)``: ``info(cfg, base_dir)`` says
(classes, channels, image size) without loading anything, ``load(cfg, base_dir, seed)`` returns the
``Dataset`` (uint8 images and labels, or image files). A plugin file registers its own the same way.
"""

from .._autoload import import_submodules

import_submodules(__name__, __path__)
