"""Great Expectations Data Docs that render without internet: their CDN links point at vendored copies.

GX writes every page with ``<script>``/``<link>`` tags to public CDNs (Bootstrap, jQuery, Font Awesome,
bootstrap-table, ...) and a logo from its own S3 bucket; without internet a page renders unstyled and the
home page's run list, drawn by bootstrap-table, stays empty. The same files, byte for byte from the npm
registry, are kept in ``include/airflow/static/vendor/<package>@<version>/`` (scripts/vendor_data_docs_assets.py
downloads them) and the plugin serves them at ``/ecommerce/vendor/``.

The links are rewritten when a page is served, not when GX builds the site: GX re-renders every page on
each audit, and a site built by any other code path (a GX upgrade, ``context.build_data_docs()`` by hand)
is covered too. ``CDN_ASSETS`` lists every CDN address the installed GX templates use; a test fails when a
GX upgrade brings one it does not list.
"""

from __future__ import annotations

import re
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor"

# CDN address in GX's templates -> the same file under VENDOR_DIR.
CDN_ASSETS: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap@4.3.1/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap@4.3.1/dist/js/bootstrap.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery@3.7.1/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js@1.12.9/dist/umd/popper.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        "@fortawesome/fontawesome-free@6.6.0/css/all.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table@1.19.1/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table@1.19.1/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    # GX links the filter-control styles of 1.19.0 next to the 1.19.1 scripts; kept as GX has it
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker@1.9.0/dist/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker@1.9.0/dist/js/bootstrap-datepicker.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css",
}

# Vega draws GX's charts, and only expect_column_kl_divergence_to_be_less_than renders one: the contract's
# pages never call vegaEmbed, so their 830 KB of Vega scripts are left out rather than vendored. A page that
# does draw a chart keeps the CDN tags (its chart then needs internet; the rest of it does not).
VEGA_SCRIPTS = re.compile(r'<script src="https://cdn\.jsdelivr\.net/npm/vega(?:-lite|-embed)?@\d+"></script>\s*')

# GX's logos come from its S3 bucket, the light one with the data context's id in the query (a usage
# ping). Every site has logo-long.png in its own static/images; the dark-mode logo has no local copy, so
# dark mode shows the light one.
GX_WEB_ASSETS = re.compile(r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/"
                           r"(logo-long|full_logo_dark)\.png(?:\?[^\"'()\s]*)?")

# GX links a validation page's favicon one folder short of the site's root (it counts the folders of a
# suite name without dots), so it is linked from the root here, like the logo.
FAVICON = re.compile(r'href="(?:\.{1,2}/)*static/images/favicon\.ico"')

_CDN_ADDRESS = re.compile("|".join(re.escape(url) for url in sorted(CDN_ASSETS, key=len, reverse=True)))


def offline_page(html: str, page_path: str) -> str:
    """``html`` of the site's page at ``page_path`` (relative to the site's root, e.g. ``index.html``)
    with CDN and S3 addresses replaced by relative links to the vendored files and the site's own logo
    and favicon.

    Relative links keep working wherever the Airflow UI is mounted (a proxy sub-path too): the site is
    served at ``<prefix>/data-docs/`` and the vendored files at ``<prefix>/vendor/``.
    """
    to_site_root = "../" * page_path.count("/")
    to_vendor = to_site_root + "../vendor/"
    if "vegaEmbed(" not in html:
        html = VEGA_SCRIPTS.sub("", html)
    html = _CDN_ADDRESS.sub(lambda match: to_vendor + CDN_ASSETS[match.group(0)], html)
    html = FAVICON.sub(f'href="{to_site_root}static/images/favicon.ico"', html)
    return GX_WEB_ASSETS.sub(to_site_root + "static/images/logo-long.png", html)
