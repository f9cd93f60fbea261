"""The web pages the project plugin adds to the Airflow UI, as one FastAPI app mounted at ``/ecommerce``.

* ``/ecommerce/data-docs/{path}`` serves the Great Expectations Data Docs site that every audit rebuilds
  (``GREAT_EXPECTATIONS_DIR``/gx/uncommitted/data_docs/local_site); ``/ecommerce/data-docs/index.html``
  is its home page. ``/ecommerce/run-validation?run_id=<run id>`` redirects to one run's validation page
  (the DAG run page's tab "Validation of this run"). Its pages link the vendored copies of their CDN
  scripts and styles, served at ``/ecommerce/vendor/{path}`` (include/airflow/data_docs_offline.py), so they
  render without internet.
* ``/ecommerce/dead-letters`` lists the newest ``dead_letter_events`` rows with their reasons and counts
  per rule; query parameters ``rule``, ``reason``, ``from``, ``to``, ``file``, ``run_id``, ``limit`` filter
  it. ``/ecommerce/dead-letters.csv`` exports the same selection (formula-safe, see
  include/airflow/dead_letters.py).
* ``/ecommerce/rule-violations`` (and ``.csv``) does the same for ``rule_violations``: stored rows that broke
  a rule of severity ``warn`` (include/airflow/violations.py).
* ``/ecommerce/quality-dashboard`` draws the pipeline's health over a chosen range as SVG charts
  (include/airflow/quality_dashboard.py, include/airflow/charts.py).

Airflow mounts plugin apps without any authentication of its own, so this app declares Airflow's own
authorization dependency on every route: the caller must be logged in (the UI's ``_token`` JWT cookie, or
an ``Authorization: Bearer`` token of the public API) and may read the runs of ``ecommerce_events``. A
browser without a session is sent to Airflow's login page; any other caller gets 401.

Only the api-server imports this module (the plugin builds the app on its first request), so task
processes that load plugins never pay for FastAPI, Jinja or the auth manager.
"""

from __future__ import annotations

import glob
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.airflow import dead_letters, quality_dashboard, violations
from include.airflow.data_docs_offline import VENDOR_DIR, offline_page
from include.names import DAG_ID
from include.settings import Settings

log = logging.getLogger(__name__)

URL_PREFIX = "/ecommerce"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_MS = 15_000
RAW_PREVIEW_CHARS = 300
# Our own pages run no script and load nothing from elsewhere; the raw rows they show are attacker-controlled text.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'self'; base-uri 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# The Data Docs load everything from this server (include/airflow/data_docs_offline.py) and run GX's inline
# scripts; they fetch nothing and submit no form. The sample values on them are escaped when the pages are
# built (include/quality/audit.py); this policy is the second line: a script that got in anyway could not
# load code from elsewhere or call the API. jsDelivr stays for the Vega scripts of a page that draws a chart.
DATA_DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
                               "connect-src 'none'; object-src 'none'; form-action 'none'; base-uri 'none'; "
                               "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
}
# A vendored file never changes under its <package>@<version> folder; private, as every route needs a login.
VENDOR_HEADERS = {"Cache-Control": "private, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}


def validation_page(site: Path, run_id: str) -> str | None:
    """The path (relative to the Data Docs site) of the newest validation page of the Airflow run ``run_id``.

    GX files a validation under ``validations/<suite>/<run name>/<run time>/<batch>.html`` and every
    validation here is run with the Airflow run id as its run name (include/quality/audit.py)."""
    if not run_id or "/" in run_id or run_id in (".", ".."):
        return None
    pages = [page for folder in (site / "validations").glob(f"**/{glob.escape(run_id)}") if folder.is_dir()
             for page in folder.glob("*/*.html")]
    if not pages:
        return None
    newest = max(pages, key=lambda page: (page.parent.name, page.stat().st_mtime))
    return newest.relative_to(site).as_posix()


def data_docs_dir(settings: Settings | None = None) -> Path:
    from include.quality.audit import data_docs_index

    return data_docs_index(settings or Settings.from_env()).parent


def _airflow_authorization() -> Any:
    """Airflow's own dependency: a valid Airflow session/token that may read the DAG's runs."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN, param_dag_id=DAG_ID))


async def _login_or_error(request: Request, exc: StarletteHTTPException) -> Response:
    """An unauthenticated browser goes to Airflow's login page (and back here after it); others get the error."""
    if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
    return await http_exception_handler(request, exc)


def _connect():
    """A read-only connection with short timeouts, as the reader role of ``ecommerce_postgres_reader`` (SELECT
    only: docs/security.md); a deployment without that connection reads through ``ecommerce_postgres``, in
    read-only transactions, and the log says so."""
    import psycopg

    settings, conn_id = _reader_settings()
    try:
        return psycopg.connect(
            settings.postgres_conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name="airflow-ui-dead-letters",
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c default_transaction_read_only=on -c TimeZone=UTC",
        )
    except psycopg.OperationalError as error:
        log.warning("dead letters: database unreachable: %s", error)
        raise HTTPException(503, f"The analytics database (connection {conn_id}) is unreachable; "
                                 "try again in a moment.") from error


def _reader_settings():
    """(settings, connection id) of the reader, else of the writer's connection."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from include.airflow.settings_resolution import settings_from_connection
    from include.names import POSTGRES_CONN_ID, READER_CONN_ID

    try:
        return settings_from_connection(READER_CONN_ID, live=False), READER_CONN_ID
    except AirflowNotFoundException:
        log.warning("no connection %s: the UI pages read through %s (read-only transactions); define the reader "
                    "(docs/security.md)", READER_CONN_ID, POSTGRES_CONN_ID)
        return settings_from_connection(POSTGRES_CONN_ID, live=False), POSTGRES_CONN_ID


def _templates():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    environment = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(default=True))
    environment.filters["query"] = lambda params, **changes: urlencode(
        {k: v for k, v in {**params, **changes}.items() if v not in (None, "")})
    return environment


def _rule_descriptions() -> dict[str, str]:
    from include.contract.rules import RULES_BY_NAME, describe, suite_parameters

    parameters = suite_parameters(Settings.from_env())
    descriptions = {name: describe(rule, parameters) for name, rule in RULES_BY_NAME.items()}
    descriptions[dead_letters.PARSE] = "the row could not be read or typed (see the reason)"
    return descriptions


def _html(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates().get_template(template).render(**context), status_code=status_code,
                        headers=PAGE_HEADERS)


def create_app() -> FastAPI:
    app = FastAPI(title="E-commerce pipeline pages", dependencies=[_airflow_authorization()],
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(StarletteHTTPException, _login_or_error)

    @app.get("/data-docs", include_in_schema=False)
    def data_docs_home() -> RedirectResponse:
        return RedirectResponse("data-docs/index.html", status_code=307)

    @app.get("/data-docs/{path:path}", name="data_docs")
    def data_docs(path: str) -> Response:
        """A file of the Data Docs site; nothing outside the site's folder is ever served."""
        if path in ("", "/"):
            return RedirectResponse("index.html", status_code=307)
        root = data_docs_dir().resolve()
        target = (root / path).resolve()
        if target.is_relative_to(root) and target.is_file():
            if target.suffix == ".html":
                return HTMLResponse(offline_page(target.read_text(encoding="utf-8"), path), headers=DATA_DOCS_HEADERS)
            return FileResponse(target, headers=DATA_DOCS_HEADERS)
        if path == "index.html":
            return _html("no_data_docs.html", 404, folder=str(root))
        raise HTTPException(404, "Not found")

    @app.get("/run-validation", name="run_validation")
    def run_validation(run_id: str = "") -> Response:
        """The Data Docs validation page of one Airflow run (its newest validation: an audit, a backfill's
        re-derive or a replay), or a page saying why there is none."""
        page = validation_page(data_docs_dir(), run_id)
        if page is None:
            return _html("no_run_validation.html", 404, run_id=run_id)
        return RedirectResponse(f"data-docs/{quote(page, safe='/')}", status_code=307)

    @app.get("/vendor/{path:path}", name="vendor")
    def vendor(path: str) -> FileResponse:
        """A vendored script, stylesheet or font of the Data Docs; nothing outside its folder."""
        root = VENDOR_DIR.resolve()
        target = (root / path).resolve()
        if target.is_relative_to(root) and target.is_file():
            return FileResponse(target, headers=VENDOR_HEADERS)
        raise HTTPException(404, "Not found")

    def listing(request: Request, module, filter_class, template: str, descriptions: dict[str, str],
                shape=lambda rows: rows) -> HTMLResponse:
        """A page of a table: its rows under the filters of the query, counts per rule, or a 400 that says
        which filter is wrong."""
        try:
            chosen = filter_class.from_params(request.query_params)
        except dead_letters.FilterError as error:
            return _html(template, 400, error=str(error), params=dict(request.query_params),
                         rows=[], counts=[], total=0, descriptions=descriptions, filter=None)
        with _connect() as conn:
            rows = module.recent(conn, chosen)
            total = module.matching_count(conn, chosen)
            counts = module.counts_per_rule(conn, chosen)
        return _html(template, rows=shape(rows), counts=counts, total=total, descriptions=descriptions,
                     filter=chosen, params=chosen.query_params(), error=None,
                     export_max=dead_letters.EXPORT_MAX_ROWS)

    def export(request: Request, module, filter_class, filename: str) -> StreamingResponse:
        """Every matching row as spreadsheet-safe CSV, streamed."""
        try:
            chosen = filter_class.from_params(request.query_params)
        except dead_letters.FilterError as error:
            raise HTTPException(400, str(error)) from error

        conn = _connect()  # before the response starts, so an outage is a clean 503

        def body():
            with conn:
                yield from dead_letters.csv_lines(module.export_rows(conn, chosen), module.COLUMNS)

        return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    def with_raw_preview(rows: list[dict]) -> list[dict]:
        for row in rows:
            raw = row["raw_data"] or ""
            row["raw_preview"] = raw if len(raw) <= RAW_PREVIEW_CHARS else raw[:RAW_PREVIEW_CHARS] + "…"
            row["raw_length"] = len(raw)
        return rows

    @app.get("/dead-letters", response_class=HTMLResponse)
    def dead_letters_page(request: Request) -> HTMLResponse:
        return listing(request, dead_letters, dead_letters.DeadLetterFilter, "dead_letters.html",
                       _rule_descriptions(), with_raw_preview)

    @app.get("/dead-letters.csv")
    def dead_letters_export(request: Request) -> StreamingResponse:
        return export(request, dead_letters, dead_letters.DeadLetterFilter, "dead_letter_events.csv")

    @app.get("/rule-violations", response_class=HTMLResponse)
    def rule_violations_page(request: Request) -> HTMLResponse:
        descriptions = _rule_descriptions()
        descriptions.pop(dead_letters.PARSE, None)
        return listing(request, violations, violations.ViolationFilter, "rule_violations.html", descriptions)

    @app.get("/rule-violations.csv")
    def rule_violations_export(request: Request) -> StreamingResponse:
        return export(request, violations, violations.ViolationFilter, "rule_violations.csv")

    @app.get("/quality-dashboard", response_class=HTMLResponse)
    def quality_dashboard_page(request: Request) -> HTMLResponse:
        """The charts over the range of the query (default: the last 24 h), or a 400 that says what is wrong."""
        from markupsafe import Markup

        page = {"presets": list(quality_dashboard.PRESETS), "params": dict(request.query_params)}
        try:
            chosen = quality_dashboard.TimeRange.from_params(request.query_params, datetime.now(UTC))
        except dead_letters.FilterError as error:
            return _html("quality_dashboard.html", 400, error=str(error), chosen=None, **page)
        with _connect() as conn:
            dashboard = quality_dashboard.read(conn, chosen)
        charts = {name: Markup(svg) for name, svg in quality_dashboard.render(dashboard).items()}  # escaped there
        return _html("quality_dashboard.html", error=None, chosen=chosen, charts=charts,
                     summary=quality_dashboard.summary(dashboard), **page)

    return app
