"""The CLI's last resort: anything unexpected is one line (where it happened, how to report it).

A traceback is for whoever fixes the bug, not for whoever ran the command: it is printed only with
``--debug`` (or KDGRAPH_DEBUG=1). Errors about the user's input never reach here (KDGraphError).
"""

from __future__ import annotations

import traceback
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPORT = "please report it with the command you ran (rerun with --debug to see the traceback)"


def unexpected_error_line(e: BaseException) -> str:
    """``kdgraph: unexpected ValueError: ... (at kdgraph/x.py:12 in f); this is a bug ...``."""
    text = str(e).strip().splitlines()
    what = f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__
    return f"kdgraph: unexpected {what}{_where(e)}; this is a bug in kdgraph or in a plugin: {REPORT}"


def _where(e: BaseException) -> str:
    """The innermost frame in kdgraph or a plugin file (not in torch or the standard library)."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "site-packages" not in f.filename and "/lib/python" not in f.filename]
    if not ours:
        return ""
    frame = ours[-1]
    path = Path(frame.filename)
    try:
        shown = f"kdgraph/{path.resolve().relative_to(PACKAGE)}"
    except ValueError:
        shown = path.name
    return f" (at {shown}:{frame.lineno} in {frame.name})"
