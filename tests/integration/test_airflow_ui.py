"""The pipeline's pages in the real Airflow UI, seen through a real headless Chromium.

One `make once` run publishes generated events with known bad rows; then the real `airflow api-server`
serves the UI. A user logs in through Airflow's own login page and sees the DAG grid with the successful
run, the Great Expectations Data Docs under "Data Quality", the known rows under "Dead letters", and under
"Quality dashboard" charts of that run and of hours of history written before it. A caller without an Airflow
session gets none of it. Screenshots go to test-output/ui/.

The browser is Debian's `chromium` with its `chromium-driver` (never a downloaded one).
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit

import pytest

from include.airflow.quality_dashboard import bucket_of
from include.contract.versions import V3
from include.results import validity_rate
from scripts.airflow_env import ADMIN_USER, admin_password
from scripts.generator import EventGenerator, write_raw_file
from tests.fixtures.browser import headless_chromium
from tests.fixtures.browser import log_in as log_in_as
from tests.fixtures.pipeline import PROJECT_ROOT
from tests.fixtures.processes import stop_process_group
from tests.fixtures.quality_history import BUCKET, History, insert_history
from tests.fixtures.ui import OUTPUT_DIR, graph_screenshot, loaded_addresses, log_in

pytestmark = pytest.mark.integration

PASSWORD = "ui-test-Passw0rd"
FORMULA_EVENT_ID = '=HYPERLINK("http://evil.example","click")'
FORMULA_RAW_LINE = "@SUM(1+1)*cmd|' /C calc'!A0,short"
MARKUP_EVENT_ID = "<img src=x onerror=alert(1)>"
SUITE_NAME = "ecommerce_events.contract"
TASK_IDS = ("detect_work", "package_code", "choose_path", "ingest", "audit", "publish", "quality_gate")
BACKFILL_PATH = ("backfill_ingest", "rederive")
SUCCESS_MARK = "M20 6 9 17l-5-5"  # the check mark of a successful task in Airflow 3.3's grid
# generator defect -> the rule that dead-letters it (a defect that leaves the event_id intact)
RULE_OF_DEFECT = {"negative_price": "price_in_range", "price_above_max": "price_in_range",
                  "zero_quantity": "quantity_at_least_one", "unknown_event_type": "event_type_known",
                  "purchase_without_user": "user_required_for_action", "zero_product_id": "product_id_positive"}


GARDEN_EVENT_ID = "0f6d5b1e-9c3a-4e2b-8f7d-6a5c4b3a2910"


def land_events(landing: Path) -> dict[str, str]:
    """Mostly valid generated files (well above MIN_VALIDITY_RATE) plus known dead letters; event_id -> rule."""
    generator = EventGenerator(5, invalid_ratio=0.02)
    known: dict[str, str] = {}
    for _ in range(2):
        rows = generator.generate_batch(150, "v3")
        for values, tag in zip(rows, generator.last_report.tags):
            defect = tag.removeprefix("invalid:")
            if defect in RULE_OF_DEFECT and values["event_id"] not in known:
                known[values["event_id"]] = RULE_OF_DEFECT[defect]
        generator.write_batch(rows, "v3", landing)
    # formula-like text, as an event_id (a rule failure) and as a line that cannot be parsed at all
    # and markup, which the page must show as text
    crafted = [dict(row, event_id=event_id) for row, event_id in
               zip(generator.generate_batch(2, "v3"), (FORMULA_EVENT_ID, MARKUP_EVENT_ID))]
    # a good row in a new category with a formula-like segment: stored, two warn-level violations
    crafted.append(dict(generator.generate_batch(1, "v3")[0], event_id=GARDEN_EVENT_ID, category="garden",
                        user_segment="@SUM(1+1)"))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([V3.columns, *([r[c] for c in V3.columns] for r in crafted)])
    write_raw_file((buffer.getvalue() + FORMULA_RAW_LINE + "\n").encode(), landing)
    known.update({FORMULA_EVENT_ID: "event_id_is_uuid", MARKUP_EVENT_ID: "event_id_is_uuid"})
    return known


def request(base: str, path: str, headers: dict[str, str] | None = None,
            method: str = "GET", body: str | None = None) -> tuple[int, dict[str, str], str]:
    """One raw HTTP request (no redirects followed, the path sent byte for byte as given)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def ui(pipeline, tmp_path_factory):
    """A published run and the real api-server on a free port: (base url, known dead letters, run id). The
    api-server boots while the run goes through `airflow dags test`, which does not use it."""
    pipeline.reset()
    pipeline.airflow_ready()
    base, env = pipeline.api_server_env(AIRFLOW_ADMIN_PASSWORD=PASSWORD)
    admin_password(Path(env["AIRFLOW_HOME"]), env)  # the login's password file, as `make run` writes it
    log_path = tmp_path_factory.mktemp("api-server") / "api-server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(PROJECT_ROOT / ".venv" / "bin" / "airflow"), "api-server", "--host", "127.0.0.1",
             "--port", env["AIRFLOW_API_PORT"], "--workers", "1"],
            env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        known = land_events(pipeline.landing_dir)
        done = pipeline.once()
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        run_id = pipeline.scalar("SELECT DISTINCT airflow_run_id FROM ecommerce_events")
        assert pipeline.scalar("SELECT count(*) FROM dead_letter_events WHERE event_id = ANY(%s)",
                               (list(known),)) == len(known)
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log_path.read_text()[-4000:]
            with contextlib.suppress(OSError):
                if request(base, "/api/v2/monitor/health")[0] == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(1)
        yield base, known, run_id
    finally:
        stop_process_group(server)


def api_token(base: str) -> str:
    status, _, body = request(base, "/auth/token", {"Content-Type": "application/json"}, "POST",
                              json.dumps({"username": ADMIN_USER, "password": PASSWORD}))
    assert status == 201, body
    return json.loads(body)["access_token"]


def test_without_an_airflow_session_the_pages_give_nothing_away(ui):
    base, known, run_id = ui
    pages = ["/ecommerce/dead-letters", f"/ecommerce/dead-letters?run_id={quote(run_id)}",
             "/ecommerce/dead-letters.csv", "/ecommerce/data-docs/index.html",
             "/ecommerce/rule-violations", "/ecommerce/rule-violations.csv", "/ecommerce/quality-dashboard",
             "/ecommerce/vendor/jquery@3.7.1/dist/jquery.min.js", f"/ecommerce/run-validation?run_id={quote(run_id)}"]
    for path in pages:
        for headers in ({}, {"Cookie": "_token=forged.jwt.value"}, {"Authorization": "Bearer forged.jwt.value"}):
            status, _, body = request(base, path, headers)
            assert status in (401, 403), (path, headers, status)
            assert not any(event_id in body for event_id in [*known, GARDEN_EVENT_ID]) and SUITE_NAME not in body, (path, body[:300])
        # a browser without a session is sent to Airflow's login page, and back afterwards
        status, headers, _ = request(base, path, {"Accept": "text/html"})
        assert status == 303 and headers["location"].startswith("/auth/login?next="), (path, status, headers)


def test_the_data_docs_route_serves_nothing_outside_the_site(ui, pipeline):
    base, _, _ = ui
    auth = {"Authorization": f"Bearer {api_token(base)}"}
    status, _, body = request(base, "/ecommerce/data-docs/index.html", auth)
    assert status == 200 and SUITE_NAME in body
    gx_config = pipeline.settings.great_expectations_dir / "gx" / "great_expectations.yml"
    assert "config_version" in gx_config.read_text()  # a file just outside the site, which must stay unreachable
    for path in ("/ecommerce/data-docs/..%2F..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
                 "/ecommerce/data-docs/%2Fetc%2Fpasswd", "/ecommerce/data-docs/..%2f..%2f..%2fgreat_expectations.yml",
                 "/ecommerce/data-docs/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
                 f"/ecommerce/data-docs/{quote(str(gx_config), safe='')}",
                 "/ecommerce/vendor/..%2F..%2F..%2Fsettings.py", "/ecommerce/vendor/%2Fetc%2Fpasswd"):
        status, _, body = request(base, path, auth)
        assert status == 404 and "root:" not in body and "config_version" not in body, (path, status, body[:200])
        assert "Settings" not in body, (path, body[:200])


def site_pages(pipeline, run_id: str) -> list[str]:
    """The Data Docs' home page, the suite's page and this run's validation result, relative to the site."""
    site = pipeline.settings.great_expectations_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    [result] = (site / "validations" / "ecommerce_events" / "contract" / run_id).glob("*/*.html")
    return ["index.html", "expectations/ecommerce_events/contract.html", result.relative_to(site).as_posix()]


def test_no_page_loads_a_script_style_or_image_from_the_internet(ui, pipeline):
    """Every address a Data Docs page loads is one the plugin serves; the plugin's own pages load nothing."""
    base, _, run_id = ui
    auth = {"Authorization": f"Bearer {api_token(base)}"}
    for page in site_pages(pipeline, run_id):
        page_url = f"{base}/ecommerce/data-docs/{quote(page)}"
        status, _, body = request(base, urlsplit(page_url).path, auth)
        assert status == 200 and "Great Expectations" in body, (page, status)
        addresses = [urljoin(page_url, address) for address in loaded_addresses(body)]
        assert len(addresses) > 10 and [a for a in addresses if not a.startswith(base + "/")] == [], page
        # the dead letter MARKUP_EVENT_ID (an <img src=x onerror=...>) is a sample value on the validation
        # page: shown as text, never as a tag that loads anything
        assert urljoin(page_url, "x") not in addresses, page
        assert "<img src=x" not in body, page
        for address in addresses:
            status, headers, _ = request(base, urlsplit(address).path, auth)
            assert status == 200, (page, address, status)
            if address.endswith((".css", ".js")):
                assert headers["content-type"].startswith(("text/css", "text/javascript")), (address, headers)
    for page in ("/ecommerce/dead-letters", "/ecommerce/rule-violations", "/ecommerce/quality-dashboard"):
        status, _, body = request(base, page, auth)
        assert status == 200 and loaded_addresses(body) == [], page


def test_the_data_docs_render_styled_without_internet(ui, pipeline):
    """A browser that reaches nothing but the api-server sees the Data Docs styled and their run list drawn."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    with headless_chromium(offline=True) as browser:
        try:
            look_at_the_data_docs_offline(ui, browser, pipeline)
        except Exception:
            browser.save_screenshot(str(OUTPUT_DIR / "failure-offline.png"))
            (OUTPUT_DIR / "failure-offline.html").write_text(browser.page_source)
            raise


# What the page's stylesheets and scripts came to: each value is only what the vendored files give
# (a browser's defaults are a serif font, block rows and no icon font, and no jQuery at all).
PAGE_STATE = """
const done = arguments[arguments.length - 1];
document.fonts.ready.then(() => {
  const style = (selector, pseudo) => getComputedStyle(document.querySelector(selector), pseudo || null);
  const tables = [...document.querySelectorAll('table[data-toggle="table"]')];
  done({
    bodyFont: style('body').fontFamily,
    rowDisplay: style('.row').display,
    navbarDisplay: style('.navbar').display,
    iconFont: style('.fas', '::before').fontFamily,
    iconFontFaces: [...document.fonts].filter(f => f.family.includes('Font Awesome 6 Free'))
                                      .map(f => f.weight + ' ' + f.status),
    emptyStylesheets: [...document.querySelectorAll('link[rel=stylesheet]')]
                        .filter(link => !link.sheet || link.sheet.cssRules.length === 0).map(link => link.href),
    loadedFrom: [...document.querySelectorAll('script[src], link[rel=stylesheet], img[src]')]
                  .map(e => e.src || e.href),
    libraries: window.jQuery ? [jQuery.fn.jquery, typeof jQuery.fn.bootstrapTable, typeof jQuery.fn.tooltip,
                                typeof jQuery.fn.datepicker, typeof window.Popper] : [],
    tables: tables.length,
    tablesDrawn: tables.filter(t => t.closest('.bootstrap-table')).length,
  });
});
"""


def fetch_outcome(browser, url: str) -> str:
    return browser.execute_async_script(
        "const done = arguments[1];"
        "fetch(arguments[0], {mode: 'no-cors', cache: 'no-store'}).then(() => done('loaded'), e => done('failed: ' + e));",
        url)


def assert_styled_by_the_vendored_files(browser, base: str) -> dict:
    state = browser.execute_async_script(PAGE_STATE)
    assert state["bodyFont"].startswith("-apple-system") and "Segoe UI" in state["bodyFont"], state  # Bootstrap's reboot
    assert state["rowDisplay"] == "flex" and state["navbarDisplay"] == "flex", state  # Bootstrap's grid and navbar
    assert '"Font Awesome 6 Free"' in state["iconFont"] and "900 loaded" in state["iconFontFaces"], state
    assert state["emptyStylesheets"] == [] and len(state["loadedFrom"]) > 10, state
    assert [address for address in state["loadedFrom"] if not address.startswith(base + "/")] == [], state
    assert state["libraries"] == ["3.7.1", "function", "function", "function", "function"], state
    assert state["tables"] >= 1 and state["tablesDrawn"] == state["tables"], state  # bootstrap-table drew them
    return state


def look_at_the_data_docs_offline(ui, browser, pipeline) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, run_id = ui
    wait = WebDriverWait(browser, 60)
    home = "/ecommerce/data-docs/index.html"
    log_in_as(browser, base, ADMIN_USER, PASSWORD, home)  # Airflow's login page, then back to the Data Docs
    wait.until(lambda d: urlsplit(d.current_url).path == home)

    # a script on a Data Docs page may not call anything, the Airflow API included (their CSP: connect-src 'none')
    assert fetch_outcome(browser, f"{base}/api/v2/version").startswith("failed: TypeError")

    # the internet is really out of reach, by name and by address, while the api-server answers (tried from
    # a vendored file's address, whose response sets no CSP)
    browser.get(f"{base}/ecommerce/vendor/jquery@3.7.1/dist/jquery.min.js")
    for outside in ("https://cdn.jsdelivr.net/npm/jquery@3.7.1/dist/jquery.min.js",
                    "https://code.jquery.com/jquery-3.7.1.min.js", "http://1.1.1.1/"):
        assert fetch_outcome(browser, outside).startswith("failed: TypeError"), outside
    assert fetch_outcome(browser, f"{base}/api/v2/version") == "loaded"
    browser.get(base + home)

    # the home page: styled, and its run list drawn by bootstrap-table, naming this run
    runs = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".bootstrap-table .ge-index-page-validation-results-table")))
    wait.until(lambda _: run_id in runs.text)
    assert_styled_by_the_vendored_files(browser, base)
    time.sleep(1)
    browser.save_screenshot(str(OUTPUT_DIR / "data_docs_offline_index.png"))

    # a click on the run's row opens its validation result (bootstrap-table's row click handler)
    runs.find_element(By.XPATH, f".//tr[contains(., '{run_id}')]").click()
    wait.until(lambda d: "/ecommerce/data-docs/validations/" in d.current_url)
    wait.until(EC.presence_of_element_located((By.XPATH, f"//*[contains(text(), '{run_id}')]")))
    # the dead letter MARKUP_EVENT_ID is a sample value there: the page shows its text, its onerror never runs
    with contextlib.suppress(TimeoutException):
        WebDriverWait(browser, 3).until(EC.alert_is_present())
        pytest.fail("a sample value's markup ran as HTML on the validation page")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert MARKUP_EVENT_ID in body, body[:1000]
    assert SUITE_NAME in body and "Expectation Validation Result" in body, body[:1000]
    assert unquote(urlsplit(browser.current_url).path) == "/ecommerce/data-docs/" + site_pages(pipeline, run_id)[2]
    assert_styled_by_the_vendored_files(browser, base)
    time.sleep(1)
    browser.save_screenshot(str(OUTPUT_DIR / "data_docs_offline_validation.png"))


def test_the_csv_export_lists_the_known_rows_and_is_formula_safe(ui):
    base, known, run_id = ui
    auth = {"Authorization": f"Bearer {api_token(base)}"}
    status, headers, body = request(base, "/ecommerce/dead-letters.csv?" + urlencode({"run_id": run_id}), auth)
    assert status == 200 and headers["content-type"].startswith("text/csv"), body[:300]
    records = list(csv.DictReader(io.StringIO(body)))
    by_event = {record["event_id"]: record for record in records}
    assert "'" + FORMULA_EVENT_ID in by_event and FORMULA_EVENT_ID not in by_event
    assert by_event["'" + FORMULA_EVENT_ID]["failed_rules"] == "event_id_is_uuid"
    unparsable = [r for r in records if r["raw_data"].endswith(FORMULA_RAW_LINE)]
    assert [(r["raw_data"], r["error_kind"]) for r in unparsable] == [("'" + FORMULA_RAW_LINE, "parse")]
    for event_id, rule in known.items():
        if event_id != FORMULA_EVENT_ID:
            assert rule in by_event[event_id]["failed_rules"].split(";")
    for record in records:
        for column in ("event_id", "validation_errors", "source_file", "raw_data", "airflow_run_id"):
            assert not record[column].lstrip().startswith(("=", "+", "-", "@", "\t", "\r")), record
    # the rule filter narrows the export to that rule
    status, _, body = request(base, "/ecommerce/dead-letters.csv?rule=event_id_is_uuid", auth)
    assert status == 200 and {r["failed_rules"] for r in csv.DictReader(io.StringIO(body))} == {"event_id_is_uuid"}


def test_rule_violations_list_stored_rows_by_rule_and_export_formula_safe(ui, pipeline):
    base, _, run_id = ui
    assert pipeline.scalar("SELECT category FROM ecommerce_events WHERE event_id = %s", (GARDEN_EVENT_ID,)) == "garden"
    auth = {"Authorization": f"Bearer {api_token(base)}"}
    status, headers, body = request(base, "/ecommerce/rule-violations?" + urlencode({"run_id": run_id}), auth)
    assert status == 200 and "default-src 'none'" in headers["content-security-policy"]
    assert GARDEN_EVENT_ID in body and "category = garden" in body and "<code>category_known</code>" in body
    status, _, body = request(base, "/ecommerce/rule-violations?" + urlencode({"rule": "category_known"}), auth)
    assert status == 200 and "user_segment = @SUM" not in body and "category = garden" in body
    status, headers, body = request(base, "/ecommerce/rule-violations.csv?" + urlencode({"run_id": run_id}), auth)
    assert status == 200 and headers["content-type"].startswith("text/csv")
    records = list(csv.DictReader(io.StringIO(body)))
    assert {(r["event_id"], r["rule"], r["severity"]) for r in records} == {
        (GARDEN_EVENT_ID, "category_known", "warn"), (GARDEN_EVENT_ID, "user_segment_known", "warn")}
    assert all(not value.lstrip().startswith(("=", "+", "-", "@")) for r in records for value in r.values())
    status, _, body = request(base, "/ecommerce/rule-violations?to=soon", auth)
    assert status == 400 and "is not an ISO-8601 date or time" in body


def test_the_page_filters_by_rule_and_run_and_shows_markup_as_text(ui):
    base, known, run_id = ui
    auth = {"Authorization": f"Bearer {api_token(base)}"}
    status, headers, body = request(base, "/ecommerce/dead-letters?" + urlencode(
        {"rule": "event_id_is_uuid", "run_id": run_id}), auth)
    assert status == 200 and "default-src 'none'" in headers["content-security-policy"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in body and MARKUP_EVENT_ID not in body
    assert "=HYPERLINK(&#34;http://evil.example&#34;,&#34;click&#34;)" in body
    others = [event_id for event_id, rule in known.items() if rule != "event_id_is_uuid"]
    assert others and not any(event_id in body for event_id in others)
    status, _, body = request(base, "/ecommerce/dead-letters?" + urlencode({"run_id": "no-such-run"}), auth)
    assert status == 200 and "No dead letters match these filters." in body
    status, _, body = request(base, "/ecommerce/dead-letters?from=yesterday", auth)
    assert status == 400 and "is not an ISO-8601 date or time" in body


def test_a_logged_in_user_sees_the_run_the_data_docs_and_the_dead_letters(ui, browser, pipeline):
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    try:
        walk_through_the_ui(ui, browser, pipeline)
    except Exception:
        # what the browser showed when it went wrong, for whoever reads the CI log
        browser.switch_to.default_content()
        browser.save_screenshot(str(OUTPUT_DIR / "failure.png"))
        (OUTPUT_DIR / "failure.html").write_text(browser.page_source)
        raise


def walk_through_the_ui(ui, browser, pipeline) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base, known, run_id = ui
    wait = WebDriverWait(browser, 60)

    # log in through Airflow's own login page
    log_in(browser, base, PASSWORD)

    # the DAG grid shows the run: a cell per task, each with the success mark, and the run's state is success
    browser.get(f"{base}/dags/ecommerce_events")
    for task_id in TASK_IDS:
        cell = wait.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, f'a[data-testid="grid-{run_id}-{task_id}"] [data-testid="task-state-badge"]')))
        assert cell.find_element(By.CSS_SELECTOR, "path").get_attribute("d") == SUCCESS_MARK, task_id
    # the path this run did not take is skipped, as the Graph view below shows
    assert pipeline.task_states(run_id) == {**dict.fromkeys(TASK_IDS, "success"), **dict.fromkeys(BACKFILL_PATH, "skipped")}
    latest = browser.find_element(By.CSS_SELECTOR, f'a[href$="/runs/{run_id}"] [data-testid="state-badge"]')
    assert latest.get_attribute("aria-label") == "success"
    time.sleep(1)
    browser.save_screenshot(str(OUTPUT_DIR / "dag_grid.png"))

    # "Data Quality" in the navigation shows the Data Docs inside the UI: their home page, then this
    # run's validation result
    wait.until(EC.element_to_be_clickable((By.XPATH, "//*[normalize-space(text())='Data Quality']"))).click()
    frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Data Quality']")))
    browser.switch_to.frame(frame)
    wait.until(lambda d: "Data Docs" in d.find_element(By.TAG_NAME, "body").text)
    assert browser.execute_script("return location.pathname") == "/ecommerce/data-docs/index.html"
    site = pipeline.settings.great_expectations_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    [result] = (site / "validations" / "ecommerce_events" / "contract" / run_id).glob("*/*.html")
    browser.execute_script("location.assign(arguments[0])", quote(result.relative_to(site).as_posix()))
    wait.until(EC.presence_of_element_located((By.XPATH, f"//*[contains(text(), '{run_id}')]")))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert SUITE_NAME in body and "Expectation Validation Result" in body, body[:1000]
    # each rule shows its severity; the new category is a warn-level violation of this run
    assert "category is not a known category [severity: warn]" in body and "[severity: drop]" in body
    warn_rule = browser.find_element(By.XPATH, "//*[contains(text(), 'category is not a known category [severity: warn]')]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", warn_rule)
    browser.switch_to.default_content()
    time.sleep(1)
    browser.save_screenshot(str(OUTPUT_DIR / "data_docs_warn_rule.png"))
    browser.switch_to.frame(frame)
    browser.switch_to.default_content()
    wait.until(lambda d: "/plugin/data-quality/ecommerce/data-docs/validations/" in d.current_url)  # UI follows
    time.sleep(1)
    browser.save_screenshot(str(OUTPUT_DIR / "data_quality.png"))

    # "Dead letters" lists the known rows with their rules
    browser.find_element(By.XPATH, "//*[normalize-space(text())='Dead letters']").click()
    frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Dead letters']")))
    browser.switch_to.frame(frame)
    table = wait.until(EC.presence_of_element_located((By.ID, "dead-letters")))
    shown = {}
    for entry in table.find_elements(By.CSS_SELECTOR, "tbody.entry"):
        cells = entry.find_elements(By.CSS_SELECTOR, "tr:first-child td")
        shown[cells[1].text.strip()] = cells[2].text  # event_id -> kind and rules
    for event_id, rule in known.items():
        assert rule in shown.get(event_id, ""), (event_id, rule, shown.get(event_id))
    counts = browser.find_element(By.XPATH, "//h2[normalize-space(.)='Counts per rule']/following-sibling::table[1]").text
    assert "event_id_is_uuid" in counts
    browser.switch_to.default_content()
    browser.save_screenshot(str(OUTPUT_DIR / "dead_letters.png"))

    # "Rule violations" lists the stored row in a new category, with its rule and severity
    browser.find_element(By.XPATH, "//*[normalize-space(text())='Rule violations']").click()
    frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Rule violations']")))
    browser.switch_to.frame(frame)
    table = wait.until(EC.presence_of_element_located((By.ID, "rule-violations")))
    assert GARDEN_EVENT_ID in table.text and "category = garden" in table.text
    counts = browser.find_element(By.XPATH, "//h2[normalize-space(.)='Counts per rule and severity']/following-sibling::table[1]").text
    assert "category_known warn" in counts and "user_segment_known warn" in counts
    browser.switch_to.default_content()
    browser.save_screenshot(str(OUTPUT_DIR / "rule_violations.png"))

    # the Graph view of this every-minute run: its path ran, the backfill path is there but skipped
    graph_screenshot(browser, base, run_id, "graph_every_minute_run.png", TASK_IDS + BACKFILL_PATH)


def test_a_run_page_has_tabs_with_this_runs_dead_letters_and_validation(ui, browser, pipeline):
    """The plugin's run views (external_views, destination dag_run): the tabs the alerts link to."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from include.ops.alerts.message import links

    base, known, run_id = ui
    wait = WebDriverWait(browser, 60)
    log_in(browser, base, PASSWORD)
    tabs = links(base, run_id)
    # the grid view labels a run's tabs (the graph view, which graph_screenshot leaves chosen, shows icons)
    browser.execute_script("localStorage.setItem('default_dag_view', arguments[0])", '"grid"')
    try:
        browser.get(tabs["Airflow run"])
        for name in ("Dead letters of this run", "Validation of this run"):  # both tabs on the run's page
            wait.until(EC.presence_of_element_located((By.XPATH, f"//*[normalize-space(text())='{name}']")))

        # the alert's link opens the tab: this run's dead letters, inside the UI
        browser.get(tabs["Dead letters of this run"])
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Dead letters of this run']")))
        browser.switch_to.frame(frame)
        table = wait.until(EC.presence_of_element_located((By.ID, "dead-letters")))
        assert all(event_id in table.text for event_id in known)
        assert browser.execute_script("return new URLSearchParams(location.search).get('run_id')") == run_id
        browser.switch_to.default_content()
        time.sleep(1)
        browser.save_screenshot(str(OUTPUT_DIR / "run_tab_dead_letters.png"))

        # and this run's own validation page of the Data Docs
        browser.get(tabs["Validation of this run"])
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Validation of this run']")))
        browser.switch_to.frame(frame)
        wait.until(lambda d: "Expectation Validation Result" in d.find_element(By.TAG_NAME, "body").text)
        path = unquote(browser.execute_script("return location.pathname"))
        assert path.startswith(f"/ecommerce/data-docs/validations/ecommerce_events/contract/{run_id}/"), path
        browser.switch_to.default_content()
        time.sleep(1)
        browser.save_screenshot(str(OUTPUT_DIR / "run_tab_validation.png"))
    except Exception:
        browser.switch_to.default_content()
        browser.save_screenshot(str(OUTPUT_DIR / "failure-run-tabs.png"))
        raise

    # a run that validated nothing gets a page that says so, not an error
    auth = {"Authorization": f"Bearer {api_token(base)}"}
    status, _, body = request(base, "/ecommerce/run-validation?run_id=manual__2026-01-01T00%3A00%3A00%2B00%3A00", auth)
    assert status == 404 and "No Great Expectations validation of run" in body
    status, _, body = request(base, "/ecommerce/run-validation?run_id=..", auth)
    assert status == 404


@pytest.fixture(scope="module")
def quality_history(ui, pipeline) -> History:
    """20 hours of batches, dead letters and violations before the module's real run
    (tests/fixtures/quality_history.py)."""
    import psycopg

    with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
        return insert_history(conn, datetime.now(UTC))


def test_the_quality_dashboard_refuses_a_range_it_cannot_show(ui):
    base, _, _ = ui
    auth = {"Authorization": f"Bearer {api_token(base)}"}
    status, headers, body = request(base, "/ecommerce/quality-dashboard", auth)
    assert status == 200 and "default-src 'none'" in headers["content-security-policy"]
    assert "<script" not in body and body.count("<svg") == 5
    status, _, body = request(base, "/ecommerce/quality-dashboard?" + urlencode({"range": "<script>1</script>"}), auth)
    assert status == 400 and "range=&#39;&lt;script&gt;1&lt;/script&gt;&#39; is not one of 1h, 6h, 24h, 7d" in body
    assert "<script>1" not in body
    status, _, body = request(base, "/ecommerce/quality-dashboard?from=yesterday", auth)
    assert status == 400 and "is not an ISO-8601 date or time" in body


# What a chart of the Quality dashboard drew: its texts and every bar and point with the numbers it carries.
CHART = """
const chart = document.getElementById(arguments[0]);
const drawn = e => ({series: e.dataset.series, at: e.dataset.bucket || e.dataset.time, value: Number(e.dataset.value)});
const texts = selector => [...chart.querySelectorAll(selector)].map(e => e.textContent);
return {title: texts('.chart-title')[0], empty: texts('.empty'), legend: texts('.legend-entry'),
        xLabels: texts('.x-label'), yLabels: texts('.y-label'), width: chart.getBoundingClientRect().width,
        bars: [...chart.querySelectorAll('rect.bar')].map(drawn),
        points: [...chart.querySelectorAll('circle.point')].map(drawn)};
"""


def drawn(chart: dict, kind: str, series: str) -> dict[str, float]:
    """time (a bar's bucket, a point's time) -> value of one series of a chart."""
    return {item["at"]: item["value"] for item in chart[kind] if item["series"] == series}


def in_bucket(points: dict[str, float], bucket: datetime) -> list[float]:
    """The values of the points drawn within the 15-minute bucket that starts at ``bucket``."""
    return [value for moment, value in points.items() if bucket <= datetime.fromisoformat(moment) < bucket + BUCKET]


def at_middle(bucket: datetime) -> str:
    """Where the dashboard puts the point of a whole 15-minute bucket."""
    return (bucket + BUCKET / 2).isoformat()


def test_the_quality_dashboard_charts_the_rows_in_postgresql(ui, quality_history, browser, pipeline):
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    try:
        look_at_the_quality_dashboard(ui, quality_history, browser, pipeline)
    except Exception:
        browser.switch_to.default_content()
        browser.save_screenshot(str(OUTPUT_DIR / "failure-quality-dashboard.png"))
        (OUTPUT_DIR / "failure-quality-dashboard.html").write_text(browser.page_source)
        raise
    finally:
        browser.set_window_size(1500, 1300)


def look_at_the_quality_dashboard(ui, history: History, browser, pipeline) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, run_id = ui
    wait = WebDriverWait(browser, 60)
    # the module's real run: one publish (one transaction, one moment) of its batches
    [(published, valid, invalid, batches)] = pipeline.query(
        "SELECT max(recorded_at), sum(valid_records), sum(invalid_records), count(*) FROM data_quality_metrics "
        "WHERE airflow_run_id = %s", (run_id,))
    real_bucket = bucket_of(published, BUCKET)
    assert real_bucket not in history.buckets, (real_bucket, history.buckets[-1])

    log_in(browser, base, PASSWORD)
    browser.get(f"{base}/dags/ecommerce_events")
    wait.until(EC.element_to_be_clickable((By.XPATH, "//*[normalize-space(text())='Quality dashboard']"))).click()
    frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Quality dashboard']")))
    browser.switch_to.frame(frame)
    wait.until(EC.presence_of_element_located((By.ID, "chart-freshness")))
    assert "buckets of 15 min" in browser.find_element(By.ID, "range").text
    charts = {name: browser.execute_script(CHART, f"chart-{name}")
              for name in ("validity", "rows", "dead-letters", "violations", "freshness")}
    for name, chart in charts.items():
        assert chart["empty"] == [] and chart["width"] > 400, (name, chart["empty"], chart["width"])
        assert len(chart["xLabels"]) >= 4 and len(chart["yLabels"]) >= 3, (name, chart)
    tiles = dict(reversed(tile.text.split("\n", 1)) for tile in browser.find_elements(By.CSS_SELECTOR, ".tile"))
    assert tiles["batches published"] == f"{len(history.publishes) + batches:,}"
    assert tiles["longest wait for new data"] == "65 min"  # the outage: from the last publish before to the next

    # validity: a point per bucket with batches, all of them together and the worst one; the threshold drawn
    validity = charts["validity"]
    assert validity["title"] == "Validity rate"
    together, worst = drawn(validity, "points", "all batches"), drawn(validity, "points", "worst batch")
    assert len(together) == len(worst) == len(history.buckets) + 1
    for bucket in history.buckets:
        assert together[at_middle(bucket)] == pytest.approx(history.validity(bucket)), bucket
        assert worst[at_middle(bucket)] == pytest.approx(history.worst[bucket]), bucket
    bad = bucket_of(history.bad[0], BUCKET)
    assert worst[at_middle(bad)] < 85 and min(worst.values()) == worst[at_middle(bad)]
    assert in_bucket(together, real_bucket) == [pytest.approx(validity_rate(valid, invalid))], together
    assert "MIN_VALIDITY_RATE in force" in validity["legend"] and validity["yLabels"][-1] == "100%"

    # rows per minute of each bucket, by outcome
    rows = charts["rows"]
    for bucket in history.buckets:
        assert drawn(rows, "bars", "stored")[bucket.isoformat()] == pytest.approx(history.valid[bucket] / 15)
        assert drawn(rows, "bars", "dead-lettered")[bucket.isoformat()] == pytest.approx(history.invalid[bucket] / 15)
        assert drawn(rows, "bars", "duplicates").get(bucket.isoformat(), 0) == pytest.approx(
            history.duplicates[bucket] / 15)
    assert real_bucket.isoformat() in drawn(rows, "bars", "stored")

    # dead letters per rule: a row that broke two rules in both layers; the real run's rules in its bucket
    dead = charts["dead-letters"]
    for (bucket, rule), count in history.dead_letters.items():
        assert drawn(dead, "bars", rule)[bucket.isoformat()] == count, (bucket, rule)
    assert real_bucket.isoformat() in drawn(dead, "bars", "event_id_is_uuid")
    assert {"price_in_range", "quantity_at_least_one", "parse", "event_id_is_uuid"} <= {
        entry.rsplit(" (", 1)[0] for entry in dead["legend"]}

    # warn-level violations per rule: the history's category_known, the real run's two rules
    violations = charts["violations"]
    assert {b.isoformat(): n for b, n in history.violations.items() if n} == {
        t: n for t, n in drawn(violations, "bars", "category_known").items() if t != real_bucket.isoformat()}
    assert real_bucket.isoformat() in drawn(violations, "bars", "user_segment_known")

    # freshness, in minutes: a publish every 5 minutes, then an hour without (the wait climbs until the next
    # publish ends it); the bad batches took 95 s from their Spark batch's start to their publish
    freshness = charts["freshness"]
    waits = drawn(freshness, "points", "time since the last publish (longest in bucket)")
    slowest = drawn(freshness, "points", "slowest batch: Spark batch start to published")
    before, after = history.outage
    in_outage = [bucket_of(before, BUCKET) + n * BUCKET for n in range(1, 5)]
    assert [waits[at_middle(b)] for b in in_outage] == [
        ((b + BUCKET) - before).total_seconds() / 60 for b in in_outage] == [18, 33, 48, 63]
    assert waits[at_middle(bucket_of(after, BUCKET))] == (after - before).total_seconds() / 60 == 65
    assert {waits[at_middle(b)] for b in history.buckets if b != bucket_of(after, BUCKET)} == {5}
    assert slowest[at_middle(bad)] == round(95 / 60, 2) and len(slowest) == len(history.buckets) + 1
    assert freshness["yLabels"][0] == "0 min"

    # the captions link to the rows of the same range
    link = browser.find_element(By.LINK_TEXT, "Dead letters").get_attribute("href")
    assert "/ecommerce/dead-letters?from=" in link and "&to=" in link

    browser.switch_to.default_content()
    browser.set_window_size(1500, 1650)  # the whole page, not only its first screen
    time.sleep(1)
    browser.save_screenshot(str(OUTPUT_DIR / "quality_dashboard.png"))

    # another range: the last 6 hours, in 5-minute buckets (a batch in each)
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe[title='Quality dashboard']"))
    browser.find_element(By.LINK_TEXT, "6h").click()
    shown = wait.until(lambda d: "buckets of 5 min" in d.find_element(By.ID, "range").text
                       and d.find_element(By.ID, "range").text)
    start = datetime.strptime(shown.split(" to ")[0].removeprefix("From "), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    validity = browser.execute_script(CHART, "chart-validity")
    assert len(drawn(validity, "points", "all batches")) == len([p for p in history.publishes if p >= start]) + 1
    browser.switch_to.default_content()


def test_a_token_forged_with_the_placeholder_secret_is_refused(ui, pipeline):
    """`change-me` is what .env.example shows for AIRFLOW_JWT_SECRET: a token signed with it, with the claims of a
    real admin token, opens neither the REST API nor the project's pages. The same claims signed with the
    server's own secret do: only the key makes the difference."""
    import jwt

    base, _, _ = ui
    genuine = api_token(base)
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    sign = lambda key: jwt.encode(claims, key, algorithm=header["alg"], headers=header)  # noqa: E731
    own_secret = pipeline.env["AIRFLOW__API_AUTH__JWT_SECRET"]
    for path in ("/api/v2/dags", "/ecommerce/dead-letters"):
        assert request(base, path, {"Authorization": f"Bearer {sign(own_secret)}"})[0] == 200, path
        for placeholder in ("change-me", "changeme-to-a-long-secret"):
            status, _, body = request(base, path, {"Authorization": f"Bearer {sign(placeholder)}"})
            assert status in (401, 403), (path, placeholder, status, body[:300])
