"""Turn the bytes of one landed CSV file into canonical, still untyped records.

This is the structural half of the data contract, the part Spark's own CSV reader cannot do honestly: in
PERMISSIVE mode it pads short rows and drops extra fields, and it cannot hand back a record's raw text.
Here every record keeps its exact raw text and its first physical line number, and a record that cannot be
split into the header's fields carries the reason instead of being guessed at.

Outcomes:
* the file cannot be read at all (not UTF-8 text, a damaged ``.gz``/``.bz2``, empty, a header without a
  required column or with a column twice): ``FileRejected``;
* a record with the wrong number of fields, a broken quote, a NUL byte or an oversize field: a record
  whose ``parse_errors`` says why (its values are left empty; a NUL in its raw text is written ``\\x00``,
  since PostgreSQL text cannot hold it);
* otherwise: a record with the canonical (v3) columns as text, matched by column name
  (``versions.match_header``), plus the columns the contract does not know as JSON in ``rescued_data``.

Typing (numbers, timestamps) happens in Spark, which adds its own reasons to ``parse_errors``.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from include.contract.versions import (
    CANONICAL_COLUMNS,
    MIGRATION_DEFAULTS,
    HeaderMatch,
    UnknownSchemaVersion,
    match_header,
)

# Longest value accepted in one field. Real values are far shorter; anything longer is damage or abuse.
MAX_FIELD_CHARS = 1024
# Above this csv refuses to read a field at all; such a record is dead-lettered with its raw text.
_CSV_FIELD_LIMIT = 16 * 1024 * 1024
# The most of one record's raw text a dead letter keeps: a valid record is at most 16 fields of MAX_FIELD_CHARS,
# so only damaged records are ever cut. A longer one keeps this prefix, then its full length and a SHA-256 of
# the whole record (``bounded_raw``), so the dead-letter page and its CSV export stay small and the record can
# still be told apart from every other and found in the archived file.
MAX_RAW_CHARS = 16 * MAX_FIELD_CHARS + 64
# What a file may expand to when it is decompressed, unless the caller says otherwise (MAX_DECOMPRESSED_BYTES).
DEFAULT_MAX_DECOMPRESSED_BYTES = 256 * 2**20



class FileRejected(ValueError):
    """The whole file is unreadable; it must be quarantined with this reason, not partially loaded."""


@dataclass
class _LineTap:
    """Line iterator for csv.reader that remembers which physical lines each record consumed."""

    lines: Iterator[str]
    line_number: int = 0

    def __post_init__(self) -> None:
        self.consumed: list[str] = []

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.line_number += 1
        self.consumed.append(line)
        return line

    def take(self) -> str:
        """Raw text of the lines consumed since the last call, without the final line terminator."""
        raw = "".join(self.consumed)
        self.consumed = []
        if raw.endswith("\r\n"):
            return raw[:-2]
        return raw[:-1] if raw.endswith(("\n", "\r")) else raw


def decode(content: bytes) -> str:
    """Decode a file as UTF-8 (a BOM is allowed); raise ``FileRejected`` for anything else."""
    if not content:
        raise FileRejected("empty file: no header and no rows")
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise FileRejected(
            f"not UTF-8 text: byte 0x{content[error.start]:02x} at offset {error.start} cannot be decoded"
        ) from None


def decompress(content: bytes, source_file: str, max_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES) -> bytes:
    """The bytes of a ``.csv.gz`` / ``.csv.bz2`` file uncompressed (others as they are); ``FileRejected`` when
    the compressed stream is damaged or would expand past ``max_bytes``.

    The stream is expanded piece by piece and stopped as soon as it passes ``max_bytes``: a few MB of gzip
    that expand to a GB (a decompression bomb, or one enormous field) cost at most ``max_bytes`` of memory and
    end in quarantine, instead of a Python worker or the JVM running out of memory on every attempt."""
    lowered = source_file.lower()
    if lowered.endswith(".gz"):
        name, new = "gzip", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif lowered.endswith(".bz2"):
        name, new = "bzip2", bz2.BZ2Decompressor
    else:
        return content
    pieces: list[bytes] = []
    size = 0
    remaining = content
    try:
        while remaining:  # a file may hold several compressed members one after the other (`cat a.gz b.gz`)
            stream = new()
            pending = remaining
            while True:
                piece = stream.decompress(pending, max_bytes - size + 1)
                size += len(piece)
                pieces.append(piece)
                if size > max_bytes:
                    raise FileRejected(
                        f"{name} file expands past MAX_DECOMPRESSED_BYTES={max_bytes} bytes "
                        f"({len(content)} bytes compressed); not read")
                if stream.eof:
                    break
                pending = getattr(stream, "unconsumed_tail", b"")  # zlib keeps what max_length held back here
                if not pending and getattr(stream, "needs_input", True):
                    raise FileRejected(f"not a readable {name} file: the compressed data ends before its end marker")
            remaining = stream.unused_data
    except FileRejected:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise FileRejected(f"not a readable {name} file: {error}") from None
    return b"".join(pieces)


def bounded_raw(raw: str) -> str:
    """``raw`` as a dead letter keeps it: whole up to ``MAX_RAW_CHARS``, else its prefix, its full length and
    a SHA-256 of the whole (the marker says so in plain words)."""
    if len(raw) <= MAX_RAW_CHARS:
        return raw
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{raw[:MAX_RAW_CHARS]}… [cut: {len(raw)} characters in all, sha256 {digest}]"


def parse_file(content: bytes, source_file: str, delivery_id: int | None = None,
               max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES) -> Iterator[dict[str, object]]:
    """Yield one canonical record per CSV record of ``content`` (header excluded, blank lines skipped), with
    its lineage: ``source_file``, its first physical line, ``delivery_id``.

    Raises ``FileRejected`` before yielding anything if the file cannot be read at all.
    """
    text = decode(decompress(content, source_file, max_decompressed_bytes))
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    tap = _LineTap(iter(io.StringIO(text, newline="")))
    reader = csv.reader(tap, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise FileRejected("empty file: no header and no rows") from None
    except csv.Error as error:
        raise FileRejected(f"unreadable header line: {error}") from None
    try:
        match = match_header(header)
    except UnknownSchemaVersion as error:
        raise FileRejected(str(error)) from None
    tap.take()
    width, version = match.width, match.version
    plan = migration_plan(match)
    rescued = match.rescued

    while True:
        start_line = tap.line_number + 1
        try:
            fields = next(reader)
            error = None
        except StopIteration:
            return
        except csv.Error as csv_error:
            fields, error = None, f"malformed CSV: {csv_error}"
        raw = bounded_raw(tap.take().replace("\x00", "\\x00"))  # PostgreSQL text cannot hold NUL; keep it visible
        if fields is not None and not fields:
            continue  # a blank line holds no record
        if error is None:
            error = _structural_error(fields, width)
        record: dict[str, object] = dict.fromkeys(CANONICAL_COLUMNS)
        if error is None:
            # the canonical record straight from the fields (empty text is NULL), by the file's migration plan
            record = {column: (fields[i] or None) if i is not None else default for column, i, default in plan}
        record.update(
            schema_version=version.name,
            source_file=source_file,
            source_line=start_line,
            delivery_id=delivery_id,
            raw_data=raw,
            parse_errors=error,
            rescued_data=json.dumps({name: fields[i] or None for name, i in rescued}, ensure_ascii=False)
            if rescued and error is None else None,
        )
        yield record


def migration_plan(match: HeaderMatch) -> tuple[tuple[str, int | None, str | None], ...]:
    """Per canonical column: its position in the file's fields (None if absent) and its default
    (``versions.MIGRATION_DEFAULTS``): how a record of this header is upcast to the canonical columns.

    Worked out once per file, not per record: the parser is the ingest's Python hot path (docs/performance.md)."""
    return tuple((column, match.positions.get(column), MIGRATION_DEFAULTS[column]) for column in CANONICAL_COLUMNS)


def _structural_error(fields: list[str], width: int) -> str | None:
    if len(fields) != width:
        return f"wrong number of fields: expected {width}, found {len(fields)}"
    if any("\x00" in value for value in fields):
        return "NUL byte in a field (not valid in text)"
    oversize = [f"field {i + 1} has {len(v)} characters" for i, v in enumerate(fields) if len(v) > MAX_FIELD_CHARS]
    if oversize:
        return f"oversize field (limit {MAX_FIELD_CHARS} characters): " + "; ".join(oversize)
    return None
