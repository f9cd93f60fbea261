"""The fast path of the parser: a plain file split into columns by Arrow's compute kernels, no Python per row.

Most landed files are plain: no quotes, so no field holds a comma or a line break and every record is one
physical line; no blank lines, no carriage return but in CRLF line ends, no NUL, no line longer than a field
may be; every line with exactly the header's number of fields, and no column the contract does not know.
For such a file, splitting lines on ``\\n`` and fields on ``,`` is exactly what ``csv.reader`` does, and
Arrow does it in C++ for the whole file at once. ``parse_plain_file`` returns the records as one Arrow batch,
identical to what ``parser.parse_file`` yields for the same bytes (``tests/spark_jobs/test_parser_paths.py``
proves it on the generator's output, an evolving feed's exports and every case of the parser's tests), or
``None`` when the file is not plain: the careful parser then reads it, so quoting, damage and rescued columns
keep their exact handling.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from include.contract.columns import PARSED_COLUMNS
from include.contract.parser import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    MAX_FIELD_CHARS,
    FileRejected,
    decode,
    decompress,
    migration_plan,
)
from include.contract.versions import UnknownSchemaVersion, match_header

# What the parser hands to Spark (``spark_jobs.transforms.PARSED_SCHEMA``), as Arrow types: text but for the
# line number and the delivery id.
_NOT_TEXT = {"source_line": pa.int32(), "delivery_id": pa.int64()}
PARSED_ARROW_SCHEMA = pa.schema(
    [pa.field(c, _NOT_TEXT.get(c, pa.string())) for c in PARSED_COLUMNS] + [pa.field("file_error", pa.string())]
)
# Characters that make a file not plain: any of them needs the careful parser's rules.
_NOT_PLAIN = ('"', "\x00")
# A file body this long does not fit one Arrow string array (32-bit offsets); the careful parser reads it.
_MAX_BODY_CHARS = 2**30


def parse_plain_file(content: bytes, source_file: str, delivery_id: int | None = None,
                     max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES) -> pa.RecordBatch | None:
    """The records of a plain file as one batch of ``PARSED_ARROW_SCHEMA``, or ``None`` if it is not plain.

    Raises ``FileRejected`` exactly where ``parse_file`` does (compression, encoding, header)."""
    text = decode(decompress(content, source_file, max_decompressed_bytes))
    if "\r" in text:  # CRLF line ends are plain (the parser drops the terminator); a lone CR is not
        if text.count("\r") != text.count("\r\n"):
            return None
        text = text.replace("\r\n", "\n")
    if any(character in text for character in _NOT_PLAIN):
        return None
    header_line, _, body = text.partition("\n")
    if not header_line or len(body) >= _MAX_BODY_CHARS:
        return None
    try:
        match = match_header(header_line.split(","))
    except UnknownSchemaVersion as error:
        raise FileRejected(str(error)) from None
    if match.rescued:
        return None  # columns kept as JSON per row: the careful parser writes that JSON
    if body.endswith("\n"):
        body = body[:-1]
    lines = pc.split_pattern(pa.array([body], pa.string()), "\n").flatten() if body else pa.array([], pa.string())
    rows = len(lines)
    if rows:
        commas = pc.count_substring(lines, ",")
        if (pc.min_max(commas).as_py() != {"min": match.width - 1, "max": match.width - 1}
                or pc.max(pc.utf8_length(lines)).as_py() > MAX_FIELD_CHARS):
            return None  # a ragged line, a blank one (no commas) or a possibly oversize field
    fields = pc.split_pattern(lines, ",")
    columns: dict[str, pa.Array] = {}
    for column, index, default in migration_plan(match):
        if index is None:
            columns[column] = _repeat(default, rows)
        else:
            values = pc.list_element(fields, index)
            columns[column] = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
    columns.update(
        schema_version=_repeat(match.version.name, rows),
        source_file=_repeat(source_file, rows),
        source_line=pa.array(np.arange(2, rows + 2, dtype=np.int32)),  # the header is line 1, no blank lines
        delivery_id=pa.nulls(rows, pa.int64()) if delivery_id is None else pa.repeat(pa.scalar(delivery_id, pa.int64()), rows),
        raw_data=lines,
        parse_errors=pa.nulls(rows, pa.string()),
        rescued_data=pa.nulls(rows, pa.string()),
        file_error=pa.nulls(rows, pa.string()),
    )
    return pa.RecordBatch.from_arrays([columns[f.name] for f in PARSED_ARROW_SCHEMA], schema=PARSED_ARROW_SCHEMA)


def _repeat(value: str | None, rows: int) -> pa.Array:
    """``value`` (or NULL) ``rows`` times, filled in C++."""
    nulls = pa.nulls(rows, pa.string())
    return nulls if value is None else pc.fill_null(nulls, pa.scalar(value, pa.string()))
