"""Fault points: named moments where the fault-injection tests stop the pipeline to kill it for real.

Inert in normal operation. With ``PIPELINE_FAULT_PAUSE=<point>`` in the environment, the process that
reaches that point writes ``<point>.reached`` (holding its pid) into ``PIPELINE_FAULT_DIR`` and sleeps
``PIPELINE_FAULT_PAUSE_SECONDS`` (default 600), so a test can SIGKILL the real process exactly there, or
restart PostgreSQL underneath it and let it continue.

Points: ``before_staging``, ``mid_staging`` (a partition committed, others not), ``after_ledger`` (batch
staged, files not moved), ``after_moves`` (files moved, Spark checkpoint not committed),
``publish_in_transaction`` (publish done but not committed).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def reached(point: str) -> None:
    if os.environ.get("PIPELINE_FAULT_PAUSE") != point:
        return
    directory = Path(os.environ.get("PIPELINE_FAULT_DIR") or tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{point}.reached").write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("PIPELINE_FAULT_PAUSE_SECONDS", "600")))


def poison(content: bytes | None) -> None:
    """With ``PIPELINE_FAULT_POISON_MARKER`` set, a file containing the marker kills the Python worker that
    parses it with SIGKILL (as the OOM killer would), which fails the Spark job: a real poison file."""
    marker = os.environ.get("PIPELINE_FAULT_POISON_MARKER")
    if marker and content and marker.encode() in content:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
