"""Write the outputs of benchmarks/gpu_check.sh into RESULTS.md's GPU section, with the targets checked.

    python benchmarks/gpu_results.py OUT_DIR benchmarks/RESULTS.md

The section between ``<!-- gpu-check -->`` and ``<!-- /gpu-check -->`` is replaced (appended when absent).
Targets (issue 19): KD resnet32x4 -> resnet8x4 at batch 64 reaches 20,000 images/s with some speed option,
and its step costs at most 1.03 x the hand-written loop's.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

BEGIN, END = "<!-- gpu-check -->", "<!-- /gpu-check -->"
PARTS = (
    "tests",
    "overhead_64",
    "overhead_512",
    "throughput_64",
    "throughput_512",
    "throughput_fuse",
    "fused_peers",
    "throughput_compile",
)


def _read(out: Path, name: str) -> str:
    path = out / f"{name}.txt"
    return path.read_text().strip() if path.exists() else "(not run)"


def kd_images_per_s(texts: list[str]) -> float | None:
    """The best images/s of kd at batch 64 over the throughput tables."""
    best = None
    for text in texts:
        for m in re.finditer(r"^kd\s+64\s+(\S+)\s+([\d.]+)\s", text, re.M):
            best = max(best or 0.0, float(m.group(2)))
    return best


def kd_time_ratio(text: str) -> float | None:
    m = re.search(r"^kd\s+64\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s", text, re.M)
    return float(m.group(1)) if m else None


def section(out: Path) -> str:
    gpu = _read(out, "gpu")
    throughput = [_read(out, p) for p in PARTS if p.startswith("throughput")]
    ips, ratio = kd_images_per_s(throughput), kd_time_ratio(_read(out, "overhead_64"))
    verdict = [
        f"- KD resnet32x4 -> resnet8x4, batch 64, best images/s: {ips:,.0f} (target >= 20,000: "
        f"{'met' if ips >= 20000 else 'NOT met'})" if ips else "- KD images/s: not measured",
        f"- KD step time / hand-written loop, batch 64: {ratio:.3f} (target <= 1.03: "
        f"{'met' if ratio <= 1.03 else 'NOT met'})" if ratio else "- KD time ratio: not measured",
    ]
    body = [BEGIN, "## The GPU check (`bash benchmarks/gpu_check.sh`)", "",
            f"Measured {time.strftime('%Y-%m-%d %H:%M')} on:", "", "```", gpu, "```", "", *verdict, ""]
    for name in PARTS:
        body += [f"`{name}`:", "", "```", _read(out, name), "```", ""]
    return "\n".join(body + [END])


def main(argv: list[str]) -> int:
    out, results = Path(argv[0]), Path(argv[1])
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    new = section(out)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + new + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    results.write_text(text)
    print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
