"""Import the task modules' heavy dependencies once, in the Airflow process that forks the task processes.

On Linux, Airflow 3 starts each task by ``os.fork()`` from the process that runs it: a LocalExecutor worker,
itself forked from the scheduler when the executor starts (``make run``), or a Celery worker (``make cluster``,
Compose). A task process inherits every module its parent imported. The ``audit`` task imports Great
Expectations (scipy, pandas, pydantic models), which cost seconds of every run (docs/performance.md, "A
scheduled run"); imported here, in the parent, it is paid once per scheduler or worker start instead of once
per minute.

``plugins/airflow_local_settings.py`` calls ``preload_for_task_processes`` in every Airflow process (Airflow
imports that module at start, from the plugins folder); it imports only in the processes that fork tasks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# What the tasks import that costs seconds (the rest of a task's imports is Airflow's own, already loaded).
TASK_MODULES = ("great_expectations", "include.quality.audit")


def forks_task_processes(argv: Sequence[str], executor: str) -> bool:
    """Whether the Airflow command ``argv`` starts a process that forks task processes: ``airflow scheduler``
    with a LocalExecutor (``executor`` is ``[core] executor``), ``airflow celery worker``."""
    if not argv or not Path(argv[0]).name.startswith("airflow"):
        return False
    words = [arg for arg in argv[1:] if not arg.startswith("-")]
    if words[:2] == ["celery", "worker"]:
        return True
    return words[:1] == ["scheduler"] and "LocalExecutor" in executor


def preload_for_task_processes(argv: Sequence[str] | None = None, executor: str | None = None) -> list[str]:
    """Import ``TASK_MODULES`` if this process forks task processes; return the modules it imported."""
    import importlib

    argv = sys.argv if argv is None else argv
    if executor is None:
        from airflow.configuration import conf

        executor = conf.get("core", "executor", fallback="")
    if not forks_task_processes(argv, executor) or all(name in sys.modules for name in TASK_MODULES):
        return []  # (a task process inherits its parent's argv, and its modules: nothing to do there)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # as include.quality.audit sets it before importing
    started = time.monotonic()
    loaded = []
    for name in TASK_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # a task imports it again and reports the error where it belongs
            log.warning("could not preload %s for the task processes", name, exc_info=True)
            continue
        loaded.append(name)
    log.info("preloaded %s for the task processes in %.1f s", ", ".join(loaded), time.monotonic() - started)
    return loaded
