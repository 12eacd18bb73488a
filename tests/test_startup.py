"""`kdgraph --help`, `--version` and every subcommand's `--help` import neither torch nor accelerate."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import kdgraph
from kdgraph.cli import build_parser

from .conftest import REPO

COMMANDS = ["run", "validate", "plan", "list", "draw", "plot", "export", "eval", "cache"]


def _imported(args: list[str]) -> tuple[set[str], str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kdgraph", *args],
        capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", proc.stderr, re.M)}
    return modules, proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["--version"], *[[c, "--help"] for c in COMMANDS]], ids=" ".join)
def test_help_imports_no_torch(args: list[str]) -> None:
    modules, out = _imported(args)
    heavy = {m for m in modules if m.split(".")[0] in ("torch", "accelerate", "torchvision", "scipy", "matplotlib")}
    assert not heavy, sorted(heavy)[:5]
    if args == ["--version"]:
        assert out.strip() == f"kdgraph {kdgraph.__version__}"


def test_every_argument_has_help_and_the_override_syntax_is_shown() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(COMMANDS) <= set(sub.choices)
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help, f"kdgraph {name}: {action.dest} has no help"
    run_help = sub.choices["run"].format_help()
    for syntax in ("key=value", "+key=value", "++key=value", "~key", "example:", "--stop-after"):
        assert syntax in run_help


@pytest.mark.slow
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_validate_and_plan_import_only_what_they_use(command: str, tmp_path) -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "KDGRAPH_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-X", "importtime", "-m", "kdgraph", command, str(REPO / "graphs" / "slkd.yaml")]
    for _ in range(2):  # the first start caches the torchvision model list; the second only reads it
        proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    top = {m.group(1).split(".")[0] for m in re.finditer(r"\|\s+(\S+)$", proc.stderr, re.M)}
    assert not top & {"torchvision", "scipy", "sklearn", "matplotlib", "accelerate"}
    assert not re.search(r"\|\s+torch\._dynamo$", proc.stderr, re.M)  # 1.4 s: compile, fake tensors only


def test_the_engine_imports_no_dynamo() -> None:
    # torch.compiler.disable, fake tensors and the meta device import torch._dynamo (1.4 s, more than a
    # validate's whole dry run): only training with train.compile or train.fuse may pay for it
    code = "import sys, kdgraph.graph, kdgraph.check, kdgraph.draw, kdgraph.train\n"
    code += "print('torch._dynamo' in sys.modules)"
    for _ in range(2):  # the first start lists torchvision's models into kdgraph's cache (importing it once)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
