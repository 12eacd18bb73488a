"""The fuzzing tier's harness: run the CLI in-process on a generated input and judge how it ended.

A hostile input may end in two ways only: exit 0, or exit 2 with lines that say where (``file:line``,
``<command line>:`` or the path of the file at fault). Anything else is a finding: exit 1 (the CLI's
last resort, i.e. an unexpected exception), a traceback, an exception out of ``main``, a run over the
time bound (the command runs in a forked child that is killed at the bound, so a hang fails instead of
hanging the suite), growth of the address space past the memory bound (``RLIMIT_AS`` in the child: the
allocation fails and surfaces as an unexpected error) or a file changed outside the folders the command
may write.

Determinism: every test uses :func:`fuzz_settings` (derandomized, bounded examples, no deadline, no
example database), so CI sees the same examples on every run. ``KDGRAPH_FUZZ_EXAMPLES=N`` raises the
count and turns derandomization off: a longer run explores new inputs each time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings

EXAMPLES = int(os.environ.get("KDGRAPH_FUZZ_EXAMPLES") or 0)
TIME_BOUND_S = float(os.environ.get("KDGRAPH_FUZZ_TIME_BOUND") or 20)  # one command on a shared 2-core machine
MEMORY_BOUND = 3 << 30  # address space one command may add (torch reserves much more than it touches)
LOCATED = re.compile(r"^(<command line>|\S[^:\n]*):(\d+:)?\s")  # 'file:line: ...', 'file: ...'
LINE = re.compile(r"^(<command line>:|\S[^:\n]*:\d+:)\s")  # a graph file's problem names its line


def fuzz_settings(default_examples: int) -> settings:
    """Fixed-seed and bounded in CI; ``KDGRAPH_FUZZ_EXAMPLES`` examples, freshly drawn, when set."""
    return settings(
        max_examples=EXAMPLES or default_examples,
        derandomize=not EXAMPLES,
        database=None,
        deadline=None,
        print_blob=True,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: an example is a whole CLI run; a hang costs the bound
        suppress_health_check=list(HealthCheck),
    )


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    seconds: float
    crash: str = ""  # 'hang', a signal, or an exception that escaped main()

    def describe(self) -> str:
        head = f"exit {self.code} after {self.seconds:.1f}s {self.crash}"
        return f"{head}\nstderr:\n{self.err[-3000:]}\nstdout:\n{self.out[-800:]}"


def _child(argv: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path, extra_bytes: int) -> None:
    """In the forked child: bounds, redirected output, main(), then os._exit (never back into pytest)."""
    code = 70
    try:
        os.chdir(cwd)
        os.environ.update(env)
        for fd, path in ((1, out), (2, err)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child's whole life
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        vm = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = vm + extra_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        from kdgraph.cli import main

        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's usage errors exit 2 with a usage line: clean
            code = e.code if isinstance(e.code, int) else 2
        except BaseException:  # noqa: BLE001 - out of main(): printed as a traceback, a finding
            traceback.print_exc()
            code = 70
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 70)


def run_cli(argv: list[str], cwd: Path, env: dict[str, str] | None = None, seconds: float = TIME_BOUND_S) -> Outcome:
    """``kdgraph.cli.main(argv)`` in a forked child (torch already imported: milliseconds), judged by the parent.

    A fork isolates every example: a hang is killed, not interrupted in the middle of a lock, and a
    memory bound (RLIMIT_AS) or a changed working directory ends with the child.
    """
    import numpy  # noqa: F401 - the slow imports once, here: every child starts warm, and the memory
    import torch  # noqa: F401   bound counts what the command allocates, not torch's own mappings
    import torchvision  # noqa: F401

    import kdgraph.cli  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="kdgraph-fuzz-") as tmp:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        start = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(argv, cwd, dict(env or {}), out, err, MEMORY_BOUND)
        crash, code = "", None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - start > seconds:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                crash = f"hang: over the {seconds:.0f}s bound"
                break
            time.sleep(0.005)
        if not crash:
            if os.WIFSIGNALED(status):
                crash = f"killed by signal {os.WTERMSIG(status)}"
            else:
                code = os.WEXITSTATUS(status)
                if code == 70:
                    crash = "escaped main()"
        return Outcome(
            code, out.read_text(errors="replace"), err.read_text(errors="replace"), time.monotonic() - start, crash
        )


def assert_clean(o: Outcome, need_line: bool = False, names: tuple[str, ...] = ()) -> None:
    """Exit 0, or exit 2 whose first line says where: ``file:line`` (need_line), ``file:`` or one of `names`."""
    assert not o.crash, o.describe()
    assert "Traceback (most recent call last)" not in o.err + o.out, o.describe()
    assert o.code in (0, 2), o.describe()
    if o.code == 0:
        return
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert lines, "exit 2 without a message\n" + o.describe()
    first = lines[0]
    if first.startswith("usage: ") or first.startswith("kdgraph: error:"):  # argparse: the command line is at fault
        return
    pattern = LINE if need_line else LOCATED
    located = pattern.match(first) and not first.startswith("kdgraph: ")  # the CLI's OSError line names no input
    assert located or any(n and n in first for n in names), "the error does not say where (file:line)\n" + o.describe()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (symlinks not followed): kind, size, mtime and a content hash."""
    state: dict[str, tuple] = {}
    if not root.exists():
        return state
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = ""
            if p.is_file() and not p.is_symlink():
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_symlink():
                digest = os.readlink(p)
            state[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return state


def make_sentinel(root: Path) -> Path:
    """Files a command must never touch: a user's results, a checkpoint-looking file, a run-looking folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("a user's own file\n")
    (root / "checkpoints").mkdir(exist_ok=True)
    (root / "checkpoints" / "mine.pt").write_bytes(b"not kdgraph's")
    (root / "run.json").write_text('{"name": "not a kdgraph run"}')
    (root / "final.pt").write_bytes(b"a user's weights")
    return root


def changed(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """Entries added, removed or modified between two snapshots."""
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k))


def value_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a document."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += value_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += value_paths(v, (*prefix, i))
    return out
