"""Airflow's local settings module: every Airflow process imports it at start (Airflow puts the plugins folder on
``sys.path`` first). It defines no policy; it preloads the tasks' heavy imports in the processes that fork the
task processes (``include/airflow/preload.py``), so no DAG run pays the Great Expectations import again."""

from __future__ import annotations

__all__: list[str] = []  # no cluster policy here: Airflow registers only the names listed

try:
    from include.airflow.preload import preload_for_task_processes
except ImportError:  # the project is not on PYTHONPATH (e.g. an Airflow command run from elsewhere)
    pass
else:
    preload_for_task_processes()
