"""A plugin that raises KeyboardInterrupt while it is imported (case 108)."""

raise KeyboardInterrupt
