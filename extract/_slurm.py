"""SLURM jobs through dask-jobqueue that keep why their submission failed, so a run can stop and say it.

dask-jobqueue submits jobs in the background when the cluster is scaled; a
submission that fails (no ``sbatch``, or SLURM refusing the partition or
account) is only logged, and the run would wait for workers forever.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dask_jobqueue.slurm import SLURMCluster, SLURMJob
from distributed.core import Status

from mt2kd.errors import ConfigError


class JobSubmitError(RuntimeError):
    """A job's submission command failed or printed no job ID; the message says why."""


class RecordingSLURMJob(SLURMJob):  # type: ignore[misc]  # dask-jobqueue is untyped
    """A SLURM job that keeps the reason its submission failed in ``submit_error``."""

    submit_error: str | None = None

    async def start(self) -> None:
        try:
            await super().start()
        except Exception as e:
            self.submit_error = submit_failure(self.submit_command, e)
            self.status = Status.failed  # what the cluster's close expects of a job that never ran
            raise JobSubmitError(self.submit_error) from e


class RecordingSLURMCluster(SLURMCluster):  # type: ignore[misc]
    job_cls = RecordingSLURMJob


def submit_failure(command: str, error: BaseException) -> str:
    """What went wrong in one submission, in a line or two: the command's own error output where it has one."""
    if isinstance(error, FileNotFoundError):
        return f"the submit command {command!r} was not found"
    text = str(error)
    match = re.search(r"Exit code: (\d+).*?stderr:\n(.*)", text, flags=re.S)
    if match:
        stderr = " ".join(match.group(2).split()) or "(no error output)"
        return f"{command!r} exited with code {match.group(1)}: {stderr}"
    return f"{command!r} failed: {' '.join(text.split())}"


def check_submit_command(cluster: Any) -> None:
    """The command that submits the jobs must exist here: say so before any job is asked for."""
    command = str(cluster.job_cls.submit_command)
    program = shlex.split(command)[0]
    if shutil.which(program) is None:
        raise ConfigError(f"--scheduler slurm submits its jobs with {program!r}, which must be on PATH. Got no "
                          f"{program!r} on this machine; run on a SLURM login node, or use --scheduler local or a "
                          f"scheduler address.")


def check_submissions(cluster: Any) -> str | None:
    """Stop when every job the cluster asked for has failed to be submitted, quoting why the first failed.

    Returns a warning to show when only some were refused (the others' workers do the work), else None.
    """
    jobs = list(getattr(cluster, "workers", {}).values())
    failed = [job for job in jobs if getattr(job, "submit_error", None)]
    if not failed:
        return None
    refused = f"{len(failed)} of {len(jobs)} job(s) refused: {failed[0].submit_error}"
    if len(failed) == len(jobs):
        raise ConfigError(f"SLURM jobs for the workers must be submitted. Got {refused}. Check --slurm-queue, "
                          f"--slurm-account and --slurm-job-extra.")
    return f"warning: SLURM {refused}; the run goes on with the other jobs' workers."


class _DropSubmitErrors(logging.Filter):
    """Drop the traceback tornado logs for a failed submission: the run reports it once, as a message."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, JobSubmitError)


@contextmanager
def quiet_submit_errors() -> Iterator[None]:
    log = logging.getLogger("tornado.application")
    drop = _DropSubmitErrors()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)
