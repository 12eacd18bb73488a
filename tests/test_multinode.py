"""Past one machine: two torchrun "nodes" (one process each, rendezvous on the loopback address) train
exactly as one process with the same global batch.

Each node is its own ``torchrun --nnodes 2 --node_rank R`` launcher process, as on a cluster where every
machine runs the same command; here both share this machine's loopback interface and file system.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO
from .test_multiprocess import GRAPH, _torchrun, assert_trains_like_one_process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_like_one_with_the_global_batch(tmp_path: Path) -> None:
    graph = tmp_path / "ddp.yaml"
    graph.write_text(GRAPH)
    env = {
        **os.environ,
        "KDGRAPH_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    port = _free_port()
    out = tmp_path / "two"
    nodes = []
    for rank in (0, 1):
        cmd = [
            *_torchrun(),
            "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "kdgraph", "run", str(graph), "--out", str(out),
        ]  # fmt: skip
        log = (tmp_path / f"node{rank}.log").open("w")
        nodes.append((subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for proc, log in nodes:
        try:
            codes.append(proc.wait(timeout=150))
        finally:
            proc.kill()
            log.close()
    logs = "".join((tmp_path / f"node{r}.log").read_text()[-2000:] for r in (0, 1))
    assert codes == [0, 0], logs

    info = json.loads((out / "run.json").read_text())
    assert info["distributed_type"] == "MULTI_CPU" and info["processes"] == 2

    assert_trains_like_one_process(graph, out, tmp_path / "one")
