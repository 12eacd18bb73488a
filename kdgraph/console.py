"""What a run prints: lines, a progress bar per epoch on a terminal, plain periodic lines elsewhere.

    console = Console()                      # print to stdout; a tqdm bar on stderr when it is a terminal
    console("stage main: trains student")    # a line (prefixed inside a dependency run)
    bar = console.epoch_bar("kd/main", epoch=3, epochs=10, images=1437)
    bar.update(32); bar.show(loss=0.41, images_per_s=2100.0); bar.close()
    console.nested("teacher_resnet32x4")     # the console of a dependency run: its lines carry its name

On a terminal the bar shows the epoch's progress, images/s, the loss of the last logging window and
the ETA (tqdm). Without a terminal (a log file, CI) the same facts come as one plain line at most every
``interval`` seconds, so a log stays short. ``quiet`` silences both and the per-epoch lines; what
``kdgraph run`` prints at the end (the top-1 of each evaluated port) is printed by the CLI itself.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class PlainProgress:
    """One line at most every `interval` seconds: epoch, images done, loss, images/s, ETA of the epoch."""

    def __init__(self, say: Callable[[str], None], desc: str, images: int, interval: float):
        self.say, self.desc, self.total, self.interval = say, desc, images, interval
        self.done, self.start = 0, time.perf_counter()
        self.last_line = self.start
        self.loss: float | None = None
        self.rate: float | None = None

    def update(self, images: int) -> None:
        self.done += images

    def show(self, loss: float, images_per_s: float) -> None:
        self.loss, self.rate = loss, images_per_s
        now = time.perf_counter()
        if now - self.last_line >= self.interval:
            self.last_line = now
            eta = (self.total - self.done) / images_per_s if images_per_s > 0 else 0.0
            self.say(
                f"{self.desc}: {self.done}/{self.total} images, loss {loss:.4f}, "
                f"{images_per_s:.0f} images/s, ETA {_duration(eta)}"
            )

    def close(self) -> None:
        pass


class BarProgress:
    """A tqdm bar in images (so its rate reads images/s and its ETA is the epoch's), loss as postfix."""

    def __init__(self, desc: str, images: int, stream: TextIO):
        from tqdm import tqdm

        columns = _columns(stream)
        self.bar = tqdm(
            total=images, desc=desc, unit=" images", leave=False, file=stream, ncols=columns or 100,
            nrows=None if columns else 24,  # a terminal that reports no size (0 x 0) would hide the bar
            dynamic_ncols=bool(columns),
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
            "{rate_fmt}{postfix}]",
        )

    def update(self, images: int) -> None:
        self.bar.update(images)

    def show(self, loss: float, images_per_s: float) -> None:
        self.bar.set_postfix_str(f"loss {loss:.4f}")  # images/s and the ETA are tqdm's own

    def close(self) -> None:
        self.bar.close()


class _Silent:
    def update(self, images: int) -> None:
        pass

    def show(self, loss: float, images_per_s: float) -> None:
        pass

    def close(self) -> None:
        pass


class Console:
    """Lines through `sink` (print by default), bars on `stream` (stderr) when it is a terminal."""

    def __init__(
        self,
        sink: Callable[..., Any] | None = None,
        *,
        quiet: bool = False,
        prefix: str = "",
        stream: TextIO | None = None,
        interval: float = 10.0,
        bars: bool | None = None,
    ):
        self.sink = sink or print
        self.quiet, self.prefix, self.interval = quiet, prefix, interval
        self.stream = stream or sys.stderr
        self.bars = bars if bars is not None else _is_tty(self.stream)

    def __call__(self, message: str = "", *_: Any, **__: Any) -> None:
        if not self.quiet:
            self.sink(self.prefix + message)

    def nested(self, name: str) -> Console:
        """The console of a dependency run: indented, each line naming the graph it trains."""
        return Console(
            self.sink, quiet=self.quiet, prefix=f"{self.prefix}  [{name}] ", stream=self.stream,
            interval=self.interval, bars=self.bars,
        )

    def epoch_bar(self, desc: str, epoch: int, epochs: int, images: int) -> BarProgress | PlainProgress | _Silent:
        if self.quiet:
            return _Silent()
        label = f"{desc} epoch {epoch}/{epochs}"
        if self.bars:
            return BarProgress(self.prefix + label, images, self.stream)
        return PlainProgress(self, label, images, self.interval)  # through self: the prefix comes once


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _columns(stream: Any) -> int:
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def plural(n: int, word: str) -> str:
    """'1 epoch', '10 epochs'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def as_console(log: Any) -> Console:
    """A Console from whatever a caller gave as `log` (a Console, print, a list's append, a silent lambda)."""
    if isinstance(log, Console):
        return log
    return Console(log, bars=None if log is print else False)  # a caller collecting lines wants no bar
