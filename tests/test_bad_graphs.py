"""The bad-input corpus: every broken graph in tests/bad_graphs/ gives exactly its expected lines.

Each case is ``NN_name.yaml`` beside ``NN_name.expected`` (the exact stderr of ``kdgraph run``,
with the corpus folder written ``<dir>`` and the run folder ``<run>``) and, when the case is about
the command line, ``NN_name.args`` (one extra argument per line). Cases run in-process through
``kdgraph.cli.main``; a few run as real subprocesses to show that no traceback escapes.

Regenerate the expected files after a deliberate change of wording (then read the diff):
``python tests/test_bad_graphs.py --write``.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent / "bad_graphs"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml"))


class Payload:
    """Unpickling this touches fixtures/PWNED: what a crafted checkpoint or data file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({self.marker!r}).touch()",))


def make_fixtures(folder: Path) -> None:
    """What some cases read: a checkpoint of another network, an empty dataset root, hostile files."""
    import pickle

    import numpy as np
    import torch

    from kdgraph.nets.small import MLP

    (folder / "fixtures" / "empty_data").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(
        {"model": MLP(num_classes=4, in_channels=1, image_size=8, hidden=[4]).state_dict()},
        folder / "fixtures" / "wrong_keys.pt",
    )
    marker = folder / "fixtures" / "PWNED"
    (folder / "fixtures" / "secret.env").write_text("API_KEY: hunter2\nPASSWORD: swordfish\n")
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Payload(marker)}, folder / "fixtures" / "payload.pt")
    cifar = folder / "fixtures" / "payload_cifar" / "cifar-100-python"
    cifar.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1], b"x": Payload(marker)}
        (cifar / split).write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for path in CORPUS.iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    make_fixtures(folder)
    return folder


def case_args(folder: Path, case: str) -> list[str]:
    extra = folder / f"{case}.args"
    return extra.read_text().splitlines() if extra.exists() else []


def normalise(text: str, folder: Path, run_dir: Path) -> str:
    return text.replace(str(run_dir), "<run>").replace(str(folder), "<dir>")


def run_case(folder: Path, case: str, run_dir: Path) -> tuple[int, str]:
    """Exit status and normalised stderr of `kdgraph run CASE.yaml --out RUN ARGS...`, in-process."""
    from kdgraph.cli import main

    argv = ["run", str(folder / f"{case}.yaml"), "--out", str(run_dir), *case_args(folder, case)]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, normalise(err.getvalue(), folder, run_dir)


def test_corpus_is_large_and_complete() -> None:
    assert len(CASES) >= 40
    for case in CASES:
        assert (CORPUS / f"{case}.expected").exists(), f"{case} has no .expected file"


@pytest.mark.parametrize("case", CASES)
def test_bad_graph(case: str, corpus: Path, tmp_path: Path) -> None:
    cpu, memory = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, err = run_case(corpus, case, tmp_path / "run")
    expected = (CORPUS / f"{case}.expected").read_text()
    assert err == expected
    assert code == 2
    assert "Traceback" not in err
    assert not (corpus / "fixtures" / "PWNED").exists()  # no file's contents ran as code
    # each case is cheap: under 10 s of CPU, and the process's peak memory grew by under 1 GiB
    assert time.process_time() - cpu < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - memory < 1 << 20  # KiB
    # every line is located: file:line: or file: (a problem without a line, e.g. an override's)
    for line in err.splitlines():
        assert line.startswith(("<dir>/", "<command line>:", "  ")), line


def test_bad_run_leaves_no_run_directory(corpus: Path, tmp_path: Path) -> None:
    """A run that fails before training leaves nothing behind (the run folder is not created)."""
    for case in ("41_missing_dataset_offline", "40_checkpoint_wrong_keys", "12_unknown_net"):
        run_case(corpus, case, tmp_path / case)
        assert not (tmp_path / case).exists(), case


SUBPROCESS_CASES = ["22_three_at_once", "23_shape_mismatch", "41_missing_dataset_offline"]
SUBPROCESS_CASES += ["58_yaml_alias_bomb", "69_expr_huge_power"]  # hostile input: bounded in a real process


@pytest.mark.slow
def test_bad_graphs_in_real_processes(corpus: Path, tmp_path: Path) -> None:
    """The real command, a few cases side by side: exactly the expected lines, exit status 2, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(CORPUS.parent.parent), "KDGRAPH_CPU": "1", "OMP_NUM_THREADS": "1"}
    procs = {}
    for case in SUBPROCESS_CASES:
        argv = [sys.executable, "-m", "kdgraph", "run", str(corpus / f"{case}.yaml"), "--out", str(tmp_path / case)]
        procs[case] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for case, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, f"{case}: {err}"
        assert normalise(err, corpus, tmp_path / case) == (CORPUS / f"{case}.expected").read_text(), case


if __name__ == "__main__":  # python tests/test_bad_graphs.py --write: refresh the expected files
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corpus"
        shutil.copytree(CORPUS, folder)
        make_fixtures(folder)
        for case in CASES:
            code, err = run_case(folder, case, Path(tmp) / "run" / case)
            print(f"== {case} (exit {code})\n{err}", end="")
            if "--write" in sys.argv:
                (CORPUS / f"{case}.expected").write_text(err)
