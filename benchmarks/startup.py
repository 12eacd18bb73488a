"""Start-up cost of the command line, as wall-time ratios to `python -c "import torch"`.

    python benchmarks/startup.py [--repeat 3]

Each command runs in a fresh process (the way a user starts it), `--repeat` times, alternating with
the `import torch` reference so that load on a shared machine affects both alike; the ratio is of the
medians. Targets (issue 15): `validate`, `plan` and `draw -o x.mmd` of graphs/slkd.yaml <= 1.3,
`list nets` <= 1.5 (a warm kdgraph cache: parameter counts are cached), `--help` well under 1 (no
torch import at all). The last line is the time from `kdgraph run graphs/quickstart.yaml` to its
first training step, measured as a run with `--stop-after 1` (one step, one checkpoint) with the
digits teacher already cached, so no dependency training is counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLKD = str(ROOT / "graphs" / "slkd.yaml")
QUICKSTART = str(ROOT / "graphs" / "quickstart.yaml")
KDGRAPH = [sys.executable, "-m", "kdgraph"]


def wall(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kdgraph-startup-")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KDGRAPH_CACHE": os.path.join(work, "cache")}
    env.setdefault("OMP_NUM_THREADS", "1")
    cases = {
        "kdgraph --help": [*KDGRAPH, "--help"],
        "kdgraph validate graphs/slkd.yaml": [*KDGRAPH, "validate", SLKD],
        "kdgraph plan graphs/slkd.yaml": [*KDGRAPH, "plan", SLKD],
        "kdgraph draw graphs/slkd.yaml -o x.mmd": [*KDGRAPH, "draw", SLKD, "-o", "x.mmd"],
        "kdgraph list nets": [*KDGRAPH, "list", "nets"],
    }
    targets = {"kdgraph list nets": 1.5, "kdgraph --help": 1.0}
    for cmd in cases.values():  # warm the file cache and kdgraph's own cache (torchvision catalogue, counts)
        wall(cmd, env, work)
    reference = [wall([sys.executable, "-c", "import torch"], env, work) for _ in range(args.repeat)]
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, cmd in cases.items():
            times[name].append(wall(cmd, env, work))
            reference.append(wall([sys.executable, "-c", "import torch"], env, work))
    ref = statistics.median(reference)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"python -c 'import torch': {ref:.2f} s (median of {len(reference)}; load average {load:.1f})")
    print(f"{'command':<42} {'seconds':>8} {'ratio':>6} {'target':>7}")
    for name, ts in times.items():
        t = statistics.median(ts)
        target = targets.get(name, 1.3)
        print(f"{name:<42} {t:8.2f} {t / ref:6.2f} {'<= ' + str(target):>7}")
    wall([*KDGRAPH, "run", QUICKSTART, "--quiet", "--out", os.path.join(work, "warm")], env, work)  # the teacher
    first = [
        wall([*KDGRAPH, "run", QUICKSTART, "--quiet", "--stop-after", "1", "--out", os.path.join(work, f"s{i}")], env,
             work)
        for i in range(args.repeat)
    ]
    t = statistics.median(first)
    print(f"{'kdgraph run graphs/quickstart.yaml: first step':<42} {t:8.2f} {t / ref:6.2f}")


if __name__ == "__main__":
    main()
