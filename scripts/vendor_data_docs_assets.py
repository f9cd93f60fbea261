"""Download the Data Docs' browser assets from the npm registry into include/airflow/static/vendor/.

    python -m scripts.vendor_data_docs_assets           # (re)write the vendored files and their README.md
    python -m scripts.vendor_data_docs_assets --check   # exit 1 when the vendored files differ from the registry's

Which files are kept comes from ``CDN_ASSETS`` in include/airflow/data_docs_offline.py (the files the
Data Docs pages link), plus the fonts and images their stylesheets reference and each package's licence.
Every tarball must match the sha512 pinned here, which is the ``dist.integrity`` the registry published for
that version, so the vendored bytes are the registry's and a rerun writes the same files.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from include.airflow.data_docs_offline import CDN_ASSETS, VENDOR_DIR

REGISTRY = "https://registry.npmjs.org"

# <name>@<version> -> the registry's dist.integrity of its tarball
INTEGRITY = {
    "bootstrap@4.3.1":
        "sha512-rXqOmH1VilAt2DyPzluTi2blhk17bO7ef+zLLPlWvG494pDxcM234pJ8wTc/6R40UWizAIIMgxjvxZg5kmsbag==",
    "jquery@3.7.1":
        "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
    "popper.js@1.12.9":
        "sha512-s0EEi9xiSCdqz9lV4IiVH5yIZnDX/U1t0tCjB+0jXx9jW8lrR7kOpVupiUg175ogqVoudpDXHF1p6dKATCHMeg==",
    "@fortawesome/fontawesome-free@6.6.0":
        "sha512-60G28ke/sXdtS9KZCpZSHHkCbdsOGEhIUGlwq6yhY74UpTiToIh8np7A8yphhM4BWsvNFtIvLpi4co+h9Mr9Ow==",
    "bootstrap-table@1.19.1":
        "sha512-WvV+l1AI/C+zThaKmfHmi/IuayVNB0qdFyEhFx1jyZhO0oLtNJNANkCR3rvJf6Dkh72dsLElxpE/bzK9seEQLA==",
    "bootstrap-table@1.19.0":
        "sha512-L+USHm3X9FKocx/6yngGu12yF6r6s1Ntuc+hoIK2a2QQJjHw5kcySLiE2HY/9sEaSGAOfPbfQOtBH3uKkcpqEA==",
    "bootstrap-datepicker@1.9.0":
        "sha512-9rYYbaVOheGYxjOr/+bJCmRPihfy+LkLSg4fIFMT9Od8WwWB/MB50w0JO1eBgKUMbb7PFHQD5uAfI3ArAxZRXA==",
    "@forevolve/bootstrap-dark@1.1.0":
        "sha512-A3ucpEpxPoTVO490lZZCfjPXxv832l7mm1IxX3bXyxvgwnPGXDLyh7dWrphXKO8YBAu3EswbBEu3VSW8NRMW3A==",
}

# A package whose tarball has no licence file: its licence's text, after the notice in the linked file's header.
LICENCE_WITHOUT_FILE = {"popper.js@1.12.9": "MIT"}
MIT_LICENCE = """Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction, including
without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do so, subject to the following
conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions
of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED
TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL
THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
DEALINGS IN THE SOFTWARE.
"""
LICENCE_FILE = re.compile(r"(LICEN[CS]E|COPYING)(\.(md|txt))?", re.IGNORECASE)
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")


class VendoringFailed(Exception):
    """The registry's package is not the pinned one, or lacks a file the Data Docs need."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


def split_spec(spec: str) -> Package:
    name, _, version = spec.rpartition("@")
    return Package(name, version)


def wanted_files() -> dict[Package, set[str]]:
    """Package -> the files of it that the Data Docs pages link."""
    wanted: dict[Package, set[str]] = {}
    for target in CDN_ASSETS.values():
        scope_and_name = 2 if target.startswith("@") else 1
        parts = target.split("/")
        package = split_spec("/".join(parts[:scope_and_name]))
        wanted.setdefault(package, set()).add("/".join(parts[scope_and_name:]))
    unpinned = {p.spec for p in wanted} ^ set(INTEGRITY)
    if unpinned:
        raise VendoringFailed(f"CDN_ASSETS and INTEGRITY disagree on {sorted(unpinned)}: pin the same packages in both")
    return wanted


def download(package: Package) -> bytes:
    pinned = INTEGRITY[package.spec]
    with urllib.request.urlopen(f"{REGISTRY}/{package.name}/{package.version}", timeout=60) as response:
        published = json.load(response)["dist"]
    if published["integrity"] != pinned:
        raise VendoringFailed(f"{package.spec}: the registry now publishes integrity {published['integrity']}, "
                              f"pinned is {pinned}; find out why before re-pinning")
    with urllib.request.urlopen(published["tarball"], timeout=120) as response:
        tarball = response.read()
    actual = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if actual != pinned:
        raise VendoringFailed(f"{package.spec}: the downloaded tarball has {actual}, pinned is {pinned}")
    return tarball


def extract(package: Package, tarball: bytes, files: set[str], into: Path) -> dict:
    """Write ``files`` of the package (and what their CSS references, and its licence) under
    ``into/<name>@<version>/``; the package's package.json as a dict."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        # npm tarballs put everything under one top folder, usually package/
        members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if m.isfile() and "/" in m.name}

        def read(path: str) -> bytes:
            if path not in members:
                raise VendoringFailed(f"{package.spec} has no {path}")
            return archive.extractfile(members[path]).read()

        manifest = json.loads(read("package.json"))
        licences = sorted(path for path in members if "/" not in path and LICENCE_FILE.fullmatch(path))
        if not licences and LICENCE_WITHOUT_FILE.get(package.spec) != "MIT":
            raise VendoringFailed(f"{package.spec} ships no licence file; vendor it only with its licence")
        if not licences:
            header = [_header_comment(read(path)) for path in sorted(files)]
            (into / package.spec).mkdir(parents=True, exist_ok=True)
            (into / package.spec / "LICENSE").write_text(
                f"{package.spec} ships no licence file; the header of its files says:\n\n{header[0]}\n\n"
                f"The MIT License\n\n{MIT_LICENCE}")
        todo, kept = sorted(files) + licences, set()
        while todo:
            path = todo.pop()
            if path in kept:
                continue
            kept.add(path)
            content = read(path)
            if path.endswith(".css"):
                for reference in CSS_URL.findall(content.decode()):
                    if not reference.startswith(("data:", "#", "http:", "https:", "//")):
                        resolved = (Path(path).parent / reference.split("?")[0].split("#")[0]).as_posix()
                        todo.append(_normalise(resolved))
            target = into / package.spec / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    return manifest


def _header_comment(content: bytes) -> str:
    match = re.match(rb"\s*/\*!?(.*?)\*/", content, re.DOTALL)
    if not match or b"Copyright" not in match.group(1):
        raise VendoringFailed("no licence file and no copyright notice at the top of the linked file")
    return "\n".join(line.strip() for line in match.group(1).decode().strip().splitlines())


def _normalise(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def readme(manifests: dict[Package, dict], into: Path) -> str:
    rows = []
    for package, manifest in sorted(manifests.items(), key=lambda item: item[0].spec):
        folder = into / package.spec
        licences = sorted(p.name for p in folder.iterdir() if LICENCE_FILE.fullmatch(p.name))
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        rows.append(f"| `{package.name}` | {package.version} | {manifest.get('license', '?')} | "
                    f"{', '.join(f'[{name}]({package.spec}/{name})' for name in licences)} | {size / 1024:,.0f} KiB |")
    return "\n".join([
        "# Vendored browser assets of the Data Docs",
        "",
        "The Great Expectations Data Docs link these files from public CDNs; the plugin serves these copies",
        "instead (`/ecommerce/vendor/`, see include/airflow/data_docs_offline.py), so the pages render without",
        "internet. Each folder holds only the files the pages use, the fonts their stylesheets reference, and",
        "the package's licence, byte for byte from the npm registry tarball of that version.",
        "",
        "Generated by `python -m scripts.vendor_data_docs_assets`, which checks every tarball against the sha512",
        "pinned there; `--check` verifies this folder against the registry. Do not edit by hand.",
        "",
        "| package | version | licence | licence text | size |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
    ])


def vendor(into: Path) -> None:
    manifests = {}
    for package, files in wanted_files().items():
        print(f"{package.spec}: {len(files)} linked file(s)", file=sys.stderr)
        manifests[package] = extract(package, download(package), files, into)
    (into / "README.md").write_text(readme(manifests, into))


def differences(left: Path, right: Path) -> list[str]:
    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    a, b = tree(left), tree(right)
    return sorted(path for path in a.keys() | b.keys() if a.get(path) != b.get(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the vendored files with the registry's")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / "vendor"
        vendor(fresh)
        if args.check:
            changed = differences(fresh, VENDOR_DIR)
            for path in changed:
                print(f"differs from the registry: {path}", file=sys.stderr)
            return 1 if changed else 0
        shutil.rmtree(VENDOR_DIR, ignore_errors=True)
        shutil.copytree(fresh, VENDOR_DIR)
    print(f"wrote {VENDOR_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
