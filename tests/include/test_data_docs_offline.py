"""The Data Docs pages link vendored copies of their CDN files, so they render without internet."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from urllib.parse import urljoin

import pytest

from include.airflow.data_docs_offline import CDN_ASSETS, VENDOR_DIR, offline_page
from tests.fixtures.ui import loaded_addresses

pytestmark = pytest.mark.unit

SITE = "http://airflow.example/ecommerce/data-docs/"
VALIDATION_PAGE = ("validations/ecommerce_events/contract/scheduled__2026-11-30T17:52:00+00:00/"
                   "20261130T175416.916961Z/ecommerce_postgres-audit_candidates.html")


def gx_templates() -> list[Path]:
    import great_expectations

    return sorted((Path(great_expectations.__file__).parent / "render" / "view" / "templates").glob("*.j2"))


@pytest.mark.parametrize("template", gx_templates(), ids=lambda path: path.name)
def test_no_template_of_the_installed_gx_loads_anything_from_the_internet(template):
    """A GX upgrade that links a new CDN file fails here, naming it, until it is vendored."""
    rewritten = offline_page(template.read_text(), "index.html")
    assert [a for a in loaded_addresses(rewritten) if a.startswith(("http:", "https:", "//"))] == []


def test_the_templates_really_link_cdn_files():
    """The test above means something only while GX's templates hold the CDN links this module rewrites."""
    text = "".join(template.read_text() for template in gx_templates())
    assert [url for url in CDN_ASSETS if url not in text] == []


@pytest.mark.parametrize("page", ["index.html", "expectations/ecommerce_events/contract.html", VALIDATION_PAGE])
def test_the_links_resolve_to_the_vendored_files_from_any_depth_of_the_site(page):
    html = "".join(f'<link rel="stylesheet" href="{url}">' if url.endswith(".css") else f'<script src="{url}"></script>'
                   for url in CDN_ASSETS)
    resolved = [urljoin(SITE + page, address) for address in loaded_addresses(offline_page(html, page))]
    assert resolved == [f"http://airflow.example/ecommerce/vendor/{target}" for target in CDN_ASSETS.values()]


def test_gx_logo_comes_from_the_site_itself_without_the_usage_ping():
    html = ('<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png'
            '?d=20261130T175418.233505Z&dataContextId=3b3806f1-122e-431c-82a4-b7f72f71af8c">'
            "<style>.navbar-brand a { background: url('https://great-expectations-web-assets.s3.us-east-2"
            ".amazonaws.com/full_logo_dark.png') 0 0 no-repeat; }</style>")
    rewritten = offline_page(html, VALIDATION_PAGE)
    assert "amazonaws" not in rewritten and "dataContextId" not in rewritten
    [logo] = loaded_addresses(rewritten)
    assert urljoin(SITE + VALIDATION_PAGE, logo) == SITE + "static/images/logo-long.png"
    assert "url('../../../../../static/images/logo-long.png')" in rewritten


@pytest.mark.parametrize(("page", "gx_link"), [("index.html", "./static/images/favicon.ico"),
                                               (VALIDATION_PAGE, "../../../../static/images/favicon.ico")])
def test_the_favicon_is_linked_from_the_site_root(page, gx_link):
    [favicon] = loaded_addresses(offline_page(f'<link rel="shortcut icon" href="{gx_link}" type="image/x-icon"/>', page))
    assert urljoin(SITE + page, favicon) == SITE + "static/images/favicon.ico"


def test_vega_is_left_out_unless_the_page_draws_a_chart():
    vega = "".join(f'<script src="https://cdn.jsdelivr.net/npm/{name}"></script>\n'
                   for name in ("vega@5", "vega-lite@5", "vega-embed@6"))
    assert loaded_addresses(offline_page(vega + "<p>rules</p>", "index.html")) == []
    chart = vega + "<script>vegaEmbed('#kl-graph', vlSpec)</script>"
    assert len(loaded_addresses(offline_page(chart, "index.html"))) == 3


def test_every_linked_file_is_vendored_with_its_licence():
    assert [target for target in CDN_ASSETS.values() if not (VENDOR_DIR / target).is_file()] == []
    packages = {target.split("/")[0] if not target.startswith("@") else "/".join(target.split("/")[:2])
                for target in CDN_ASSETS.values()}
    assert [p for p in sorted(packages) if not list((VENDOR_DIR / p).glob("LICEN[CS]E*"))] == []
    listed = (VENDOR_DIR / "README.md").read_text()
    assert [p for p in sorted(packages) if f"| {p.rsplit('@', 1)[1]} |" not in listed or f"({p}/LICEN" not in listed] == []


def test_font_awesome_finds_its_webfonts():
    stylesheet = VENDOR_DIR / "@fortawesome/fontawesome-free@6.6.0/css/all.min.css"
    fonts = set(re.findall(r"url\(([^)]+)\)", stylesheet.read_text()))
    assert fonts and [f for f in sorted(fonts) if not (stylesheet.parent / f).resolve().is_file()] == []


def test_the_vendored_scripts_pass_the_subresource_integrity_gx_pins():
    """GX pins some CDN files with an integrity hash; the browser refuses a vendored copy that differs."""
    text = "".join(template.read_text() for template in gx_templates())
    pinned = re.findall(r'src="([^"]+)" integrity="sha384-([^"]+)"', text)
    assert pinned
    for url, digest in pinned:
        content = (VENDOR_DIR / CDN_ASSETS[url]).read_bytes()
        assert base64.b64encode(hashlib.sha384(content).digest()).decode() == digest, url
