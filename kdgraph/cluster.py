"""The sweep's runs as SLURM jobs through submitit (``pip install 'kdgraph[cluster]'``).

    kdgraph sweep graphs/kd.yaml --seeds 3 --launcher submitit --slurm-partition gpu --timeout-min 600

Each run is one job that executes the same ``kdgraph run`` command line the local launcher runs
(start, or ``--resume`` of an interrupted run). On preemption or time-out, submitit calls
``RunJob.checkpoint``: the run is told to stop (SIGTERM: it writes a checkpoint) and the job is
requeued, and the requeued job resumes it. ``--cluster local`` runs the same code path in local
processes (submitit's LocalExecutor), which is how the tests exercise it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RunError

if TYPE_CHECKING:
    from .sweep import Job

DEFAULT_TIMEOUT_MIN = 24 * 60  # submitit's own default (5 minutes) would kill a real run


def _submitit():
    try:
        import submitit
    except ImportError:
        raise RunError("--launcher submitit needs submitit: pip install 'kdgraph[cluster]'") from None
    return submitit


class RunJob:
    """A picklable job: start or resume one run of the sweep (decided when it runs), return its exit status."""

    def __init__(self, job: Job, root: str, graph: str, cwd: str):
        self.job, self.root, self.graph, self.cwd = job, root, graph, cwd
        self.proc: subprocess.Popen | None = None

    def __call__(self) -> int:
        command = [sys.executable, "-m", "kdgraph", *self.job.argv(Path(self.root), self.graph)]
        self.proc = subprocess.Popen(command, cwd=self.cwd)
        return self.proc.wait()

    def checkpoint(self) -> Any:
        """Preempted or timed out: let the run checkpoint (SIGTERM), then requeue; the new job resumes it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()
        return _submitit().helpers.DelayedSubmission(RunJob(self.job, self.root, self.graph, self.cwd))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "proc": None}  # a process is not picklable


def run_submitit(
    root: Path, waves: list[list[Job]], graph: str, name: str, options: dict[str, Any], say=print
) -> dict[str, int]:
    """Submit the runs wave after wave, wait for them, return each run's exit status."""
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=root.resolve() / "submitit", cluster=options.get("cluster"))
    params: dict[str, Any] = {
        "timeout_min": int(options.get("timeout_min", DEFAULT_TIMEOUT_MIN)),
        "gpus_per_node": int(options.get("gpus_per_node", 1)),
        "name": f"kdgraph-{name}",
    }
    if options.get("slurm_partition"):
        params["slurm_partition"] = options["slurm_partition"]
    executor.update_parameters(**params)
    results: dict[str, int] = {}
    cwd = os.getcwd()
    for wave in waves:
        submitted = []
        for job in wave:
            handle = executor.submit(RunJob(job, str(root.resolve()), graph, cwd))
            submitted.append((job, handle))
            say(f"{job.dir}: submitted as job {handle.job_id} ({executor.cluster})")
        for job, handle in submitted:
            try:
                rc = int(handle.result())
            except Exception as e:  # the job itself failed (killed, node lost): its submitit log says why
                say(f"{job.dir}: job {handle.job_id} failed: {str(e).splitlines()[0] if str(e) else repr(e)}")
                rc = 1
            results[job.dir] = rc
            say(f"{job.dir}: {'done' if rc == 0 else f'exit status {rc}'}")
    return results
