"""What every DAG of the project shares in its ``default_args``: who owns its tasks and how often they retry.

The project's policy (``tests/dags/test_dag_integrity.py``): every task has the owner ``data-engineering`` and
at least two retries. A DAG adds only what is its own: how long its tasks wait before a retry, and any other
task argument (a failure callback, an exponential backoff)::

    @dag(..., default_args=default_args(retry_delay=timedelta(minutes=5)))

Pure: no Airflow import, nothing read from the environment, so a DAG file pays nothing for it at parse time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

OWNER = "data-engineering"
RETRIES = 2


def default_args(*, retry_delay: timedelta, **task_arguments: Any) -> dict[str, Any]:
    """A DAG's ``default_args``: the project's owner and retries, then its own.

    :param retry_delay: how long a failed task waits before its retry (the first one, with a backoff).
    :param task_arguments: any other default of the DAG's tasks, e.g. ``on_failure_callback``.
    """
    return {"owner": OWNER, "retries": RETRIES, "retry_delay": retry_delay, **task_arguments}
