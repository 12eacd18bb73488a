"""validate's dry run on an empty batch against the real one (N = 2, initialised weights), per graph file.

    python benchmarks/empty_dry_run.py [graphs/*.yaml]

For each file: the real dry run's verdict and time, and the empty batch's: "pass" (it decides alone),
"defer" (kdgraph/value_watch.py leaves it to the real one, with the reason) or "fail" (the real one then
reports; the first line of the empty one's message). The last line counts them; a graph that passes on
the empty batch and fails the real dry run would be a check validate lost, and is listed as such.
"""

from __future__ import annotations

import argparse
import glob
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def first_line(e: Exception) -> str:
    lines = e.lines() if hasattr(e, "lines") else [f"{type(e).__name__}: {e}"]
    return lines[0][:140]


def main() -> None:
    from kdgraph.check import check_spec, probe, spec_data_info
    from kdgraph.errors import KDGraphError
    from kdgraph.graph import DistillGraph
    from kdgraph.meta import uninitialised
    from kdgraph.spec import load_spec
    from kdgraph.value_watch import ValueWatch, static_reason

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="graph files (default: graphs/*.yaml)")
    files = ap.parse_args().files or sorted(glob.glob(str(ROOT / "graphs" / "*.yaml")))
    counts = {"pass": 0, "defer": 0, "fail": 0}
    lost = []
    for f in files:
        try:
            spec = load_spec(f)
        except KDGraphError as e:
            print(f"{f}: does not load: {first_line(e)}")
            continue
        info = spec_data_info(spec)
        t = time.perf_counter()
        try:
            check_spec(spec, info)
            real = "pass"
        except Exception as e:  # every verdict is reported, none raised
            real = f"fail: {first_line(e)}"
        real_s = time.perf_counter() - t
        t = time.perf_counter()
        try:
            with uninitialised():
                graph = DistillGraph(spec, info)
            reason = static_reason(graph)
            if reason is None:
                with ValueWatch() as watch, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    probe(graph, batch=0)
                reason = watch.reason
            empty = "pass" if reason is None else f"defer: {reason}"
        except Exception as e:
            empty = f"fail: {first_line(e)}"
        empty_s = time.perf_counter() - t
        counts[empty.split(":")[0]] += 1
        if empty == "pass" and real != "pass":
            lost.append(f)
        print(f"{Path(f).name}: real {real} ({real_s:.2f} s) | empty batch {empty} ({empty_s:.2f} s)")
    print(f"{len(files)} files: {counts['pass']} decided on the empty batch, {counts['defer']} deferred by the "
          f"watch, {counts['fail']} failed on it (then the real dry run reports); lost checks: {lost or 'none'}")


if __name__ == "__main__":
    main()
