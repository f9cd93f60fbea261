"""Airflow's local settings module: every Airflow process imports it at start (Airflow puts the plugins folder on
``sys.path`` first). It defines no policy; it preloads the tasks' heavy imports in the processes that fork the
task processes (``include/airflow/preload.py``), so no DAG run pays the Great Expectations import again, and an
api-server that would listen beyond loopback with a placeholder secret or the default login stops with a message
saying which (``include/airflow/exposure.py``), however it was started (Compose starts it directly)."""

from __future__ import annotations

__all__: list[str] = []  # no cluster policy here: Airflow registers only the names listed

try:
    from include.airflow.exposure import ExposedWithPlaceholders, refuse_placeholders
    from include.airflow.preload import preload_for_task_processes
except ImportError:  # the project is not on PYTHONPATH (e.g. an Airflow command run from elsewhere)
    pass
else:
    import os
    import sys

    if sys.argv[1:2] == ["api-server"]:
        try:
            refuse_placeholders(os.environ)
        except ExposedWithPlaceholders as error:
            raise SystemExit(f"airflow api-server: {error}") from None
    preload_for_task_processes()
