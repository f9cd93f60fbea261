"""Which Airflow processes preload the tasks' heavy imports (``include/airflow/preload.py``): those that fork
task processes, and only those. ``tests/integration/test_make_run.py`` shows a scheduled audit finding Great
Expectations loaded."""

from __future__ import annotations

import sys

import pytest

from include.airflow.preload import TASK_MODULES, forks_task_processes, preload_for_task_processes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("argv", "executor", "forks"), [
    (["/venv/bin/airflow", "scheduler"], "LocalExecutor", True),
    (["airflow", "scheduler", "--pid", "x"], "LocalExecutor,CeleryExecutor", True),
    (["airflow", "scheduler"], "CeleryExecutor", False),  # the Celery workers run the tasks
    (["airflow", "celery", "worker", "--concurrency", "1"], "CeleryExecutor", True),
    (["airflow", "celery", "flower"], "CeleryExecutor", False),
    (["airflow", "dag-processor"], "LocalExecutor", False),
    (["airflow", "api-server"], "LocalExecutor", False),
    (["airflow", "dags", "test", "ecommerce_events"], "LocalExecutor", False),
    (["/venv/bin/pytest", "scheduler"], "LocalExecutor", False),
    ([], "LocalExecutor", False),
])
def test_only_the_processes_that_fork_tasks_preload(argv, executor, forks):
    assert forks_task_processes(argv, executor) is forks


def test_a_process_that_does_not_fork_tasks_imports_nothing():
    assert preload_for_task_processes(["airflow", "api-server"], "LocalExecutor") == []


def test_a_scheduler_imports_the_task_modules_once(monkeypatch):
    for name in TASK_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert preload_for_task_processes(["airflow", "scheduler"], "LocalExecutor") == list(TASK_MODULES)
    assert all(name in sys.modules for name in TASK_MODULES)
    # a task process inherits its parent's argv and modules: there it does nothing
    assert preload_for_task_processes(["airflow", "scheduler"], "LocalExecutor") == []
