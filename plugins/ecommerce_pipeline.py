"""Airflow plugin of the e-commerce pipeline: the "Data Quality", "Dead letters", "Rule violations" and "Quality
dashboard" pages of the Airflow UI, and two tabs of every DAG run's page.

Airflow 3 way: a FastAPI app (``include/airflow/ui.py``) mounted by the api-server at ``/ecommerce``, four
navigation entries (``external_views`` with destination ``nav``) and two run tabs (destination ``dag_run``)
that show its pages inside the UI:

* Data Quality -> ``/ecommerce/data-docs/index.html``, the Great Expectations Data Docs
* Dead letters -> ``/ecommerce/dead-letters``, recent dead-lettered rows, filters, counts per rule, CSV export
* Rule violations -> ``/ecommerce/rule-violations``, stored rows that broke a ``warn`` rule, same filters and export
* Quality dashboard -> ``/ecommerce/quality-dashboard``, charts of validity, rows per minute, dead letters and
  warn-level violations per rule, and freshness over a chosen range
* a run's tab "Dead letters of this run" -> ``/ecommerce/dead-letters?run_id=<run id>``
* a run's tab "Validation of this run" -> ``/ecommerce/run-validation?run_id=<run id>``, its Data Docs page

Every Airflow process loads plugins (each task run does, for macros), so this module imports nothing
heavy: the app is built on its first request, which only ever reaches the api-server. Its routes are
protected by Airflow's own authorization dependency (see include/airflow/ui.py).
"""

from __future__ import annotations

import threading

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/ecommerce"


class _AppOnFirstRequest:
    """An ASGI app that builds the real FastAPI app when the api-server first routes a request to it."""

    def __init__(self) -> None:
        self._app = None
        self._lock = threading.Lock()

    def _get(self):
        with self._lock:
            if self._app is None:
                from include.airflow.ui import create_app

                self._app = create_app()
        return self._app

    async def __call__(self, scope, receive, send) -> None:
        await self._get()(scope, receive, send)


class EcommercePipelinePlugin(AirflowPlugin):
    name = "ecommerce_pipeline"
    fastapi_apps = [{"app": _AppOnFirstRequest(), "url_prefix": URL_PREFIX, "name": "E-commerce pipeline pages"}]
    # Relative hrefs resolve against the UI's <base href>, so they also work under a proxy sub-path. Shown
    # in the UI at /plugin/<url_route>, as entries of the main navigation (not folded into "Plugins").
    external_views = [
        {"name": "Data Quality", "href": "ecommerce/data-docs/index.html", "destination": "nav",
         "url_route": "data-quality", "nav_top_level": True},
        {"name": "Dead letters", "href": "ecommerce/dead-letters", "destination": "nav",
         "url_route": "dead-letters", "nav_top_level": True},
        {"name": "Rule violations", "href": "ecommerce/rule-violations", "destination": "nav",
         "url_route": "rule-violations", "nav_top_level": True},
        {"name": "Quality dashboard", "href": "ecommerce/quality-dashboard", "destination": "nav",
         "url_route": "quality-dashboard", "nav_top_level": True},
        # tabs of every DAG run's page; the UI fills in {RUN_ID} (URL-encoded) with the run's id
        {"name": "Dead letters of this run", "href": "ecommerce/dead-letters?run_id={RUN_ID}",
         "destination": "dag_run", "url_route": "run-dead-letters"},
        {"name": "Validation of this run", "href": "ecommerce/run-validation?run_id={RUN_ID}",
         "destination": "dag_run", "url_route": "run-validation"},
    ]
