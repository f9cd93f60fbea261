"""The differential test of the parser's two paths: the fast path (Arrow kernels, plain files) must give what
the careful parser gives, record for record (typed-to-be values, raw text, line numbers, version, rescued
columns), on the generator's output of every kind and on the files of an evolving feed; every structural
case of ``test_event_parser.py`` goes through the same check (``tests.fixtures.parser_paths``)."""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
from pathlib import Path

import pytest

from include.contract.parser import FileRejected
from include.contract.versions import V1, V2, V3
from scripts.generator import EventGenerator
from spark_jobs.columnar import parse_plain_file
from tests.fixtures.parser_paths import PATHS, both_paths

pytestmark = pytest.mark.unit

# (generator keyword arguments, files): clean exports, every row and file defect, and each mixed together
GENERATED = [
    ({}, 6),
    ({"invalid_ratio": 0.1, "duplicate_ratio": 0.05, "late_ratio": 0.05}, 6),
    ({"structural_ratio": 0.02}, 3),
    ({"awkward_ratio": 0.02}, 3),
    ({"bom_crlf_ratio": 1.0}, 3),
    ({"bad_file_ratio": 1.0}, 6),
    ({"invalid_ratio": 0.05, "structural_ratio": 0.01, "awkward_ratio": 0.01, "bom_crlf_ratio": 0.3,
      "bad_file_ratio": 0.2}, 12),
]


def generated_files(tmp_path: Path) -> list[Path]:
    files = []
    for seed, (ratios, count) in enumerate(GENERATED):
        generator = EventGenerator(seed, **ratios)
        for index in range(count):
            version = (V1, V2, V3)[index % 3]
            files.append(generator.write_batch(generator.generate_batch(400, version), version, tmp_path / str(seed)))
    return files


def evolving_feed() -> dict[str, bytes]:
    """The exports of ``test_an_evolving_feed_is_read_by_column_name_and_every_file_gets_a_fate``, and kin."""
    generator = EventGenerator(5)
    rows = generator.generate_batch(50, V3)

    def export(header: list[str], extra: str | None = None) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for i, row in enumerate(rows):
            writer.writerow([f"X{i}" if c == extra else row.get(c.strip().lower()) for c in header])
        return buffer.getvalue().encode()

    columns = list(V3.columns)
    plain = export(columns)
    return {
        "reordered.csv": export(list(reversed(columns))),
        "shouting.csv": export([f"  {c.upper()} " for c in V2.columns]),
        "no_marketing.csv": export([c for c in columns if c not in ("referrer", "campaign_id")]),
        "coupons.csv": export([*columns[:5], "coupon_code", *columns[5:]], extra="coupon_code"),
        "events.csv.gz": gzip.compress(plain),
        "events.csv.bz2": bz2.compress(plain),
        "no_price.csv": (",".join(c for c in columns if c != "price") + "\nx\n").encode(),
        "twice.csv": (",".join([*columns, "EVENT_ID"]) + "\n").encode(),
        "broken.csv.gz": b"this is not gzip",
        "no_final_newline.csv": plain.rstrip(b"\n"),
        "blank_line_inside.csv": plain.replace(b"\n", b"\n\n", 3),
        "all_empty_row.csv": plain + b"," * (len(columns) - 1) + b"\n",
        "blank_first_line.csv": b"\n" + plain,
    }


def test_the_fast_path_reads_every_file_exactly_as_the_careful_parser(tmp_path):
    corpus = {str(path): path.read_bytes() for path in generated_files(tmp_path)}
    corpus |= {f"/landing/{name}": content for name, content in evolving_feed().items()}
    PATHS.clear()
    for name, content in corpus.items():
        with contextlib.suppress(FileRejected):
            both_paths(content, name)
    print(f"\ndifferential corpus: {len(corpus)} files: {dict(PATHS)}")
    # both paths are really exercised: the clean exports take the fast one, damage and quoting the careful one
    assert PATHS["fast files"] >= 20 and PATHS["fast records"] >= 5000
    assert PATHS["careful files"] >= 8 and PATHS["rejected by both"] >= 5
    assert PATHS["rejected, fast path declined"] + PATHS["rejected by both"] >= 6


@pytest.mark.parametrize(("name", "plain"), [
    ("reordered.csv", True), ("shouting.csv", True), ("no_marketing.csv", True), ("events.csv.gz", True),
    ("events.csv.bz2", True), ("no_final_newline.csv", True), ("all_empty_row.csv", True),
    ("coupons.csv", False), ("blank_line_inside.csv", False), ("blank_first_line.csv", False),
])
def test_which_files_the_fast_path_takes(name, plain):
    """Plain files whatever their column order, case, compression or final newline; not a file with rescued
    columns or blank lines (the careful parser owns those rules)."""
    assert (parse_plain_file(evolving_feed()[name], f"/landing/{name}") is not None) is plain
