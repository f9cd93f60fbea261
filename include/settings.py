"""The one place configuration is read from the environment.

Every variable of the original system is honoured with the same default, plus the directories of the
Airflow design (LANDING_DIR, ARCHIVE_DIR, CHECKPOINT_DIR, ...). Relative directories resolve against the
project root so that the Airflow processes, spark-submit and the generator agree on one layout.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

# Relative directories resolve against the project checkout. Code shipped to Spark inside a zip cannot find
# it from __file__, so the DAG passes PIPELINE_HOME along with the other settings.
PROJECT_ROOT = Path(os.environ.get("PIPELINE_HOME") or Path(__file__).resolve().parent.parent)


class ByteSize(int):
    """A number of bytes, written as an integer or with a k, m or g suffix (powers of 1024): ``32m``."""

    _FACTORS = {"k": 2**10, "m": 2**20, "g": 2**30}

    def __new__(cls, value: int | str = 0) -> ByteSize:
        if isinstance(value, str):
            text = value.strip().lower().removesuffix("b")
            factor = cls._FACTORS.get(text[-1:], 1)
            value = int(text[:-1] if factor > 1 else text) * factor
        return super().__new__(cls, value)


class SettingsError(ValueError):
    """An environment variable holds a value the pipeline cannot use; the message names it and says why."""


def project_path(value: str) -> Path:
    """``value`` as a path; relative ones resolve against the project root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


@dataclass(frozen=True)
class Settings:
    # PostgreSQL (the analytics store)
    postgres_host: str = "localhost"
    postgres_port: int = 5433
    postgres_db: str = "ecommerce"
    postgres_user: str = "spark"
    postgres_password: str = "spark123"
    # the libpq parameters of the connection's extra (JSON, as Airflow stores it: {"sslmode": "require",
    # "options": "-c search_path=shop"}); keys libpq does not know (the provider's own: cursor, ...) are ignored.
    # Tasks take it from the connection ecommerce_postgres, the Spark executors from the DAG (rendered from it).
    postgres_extra: str = ""
    # streaming (the original system's TRIGGER_INTERVAL and WATERMARK_DELAY are accepted and ignored: the
    # DAG's every-minute schedule is the trigger, and events are never dropped as late, only flagged)
    # A micro-batch admits claimed deliveries up to MAX_BYTES_PER_TRIGGER bytes (on disk, so compressed for
    # .csv.gz; at least one file; 32m is ~200k rows of the generator's mix; 0 = by file count only) and at most
    # MAX_FILES_PER_TRIGGER files, which bounds the memory of a batch of many small files.
    max_bytes_per_trigger: ByteSize = ByteSize("32m")
    max_files_per_trigger: int = 1000
    # data quality
    min_validity_rate: float = 95.0
    max_price: float = 10000.0
    late_arrival_minutes: int = 5
    # what a broken row rule does, per rule, over its default (include/contract/rules.py): a JSON object such as
    # {"category_known": "drop"}; warn = store the row and record the violation, drop = dead letter, fail = stop
    # the run before it publishes the batch. Airflow Variable ecommerce_rule_severity overrides it per run.
    rule_severity: str = ""
    # retries and the circuit breaker
    max_retries: int = 3
    initial_retry_delay: float = 1.0
    retry_backoff_factor: float = 2.0
    circuit_breaker_threshold: int = 5
    # how long an OPEN breaker skips runs before one trial run (HALF-OPEN)
    circuit_breaker_cooldown_seconds: int = 300
    # a file whose staging crashed the Spark job this many times is quarantined (a poison file)
    poison_file_max_attempts: int = 3
    # how long an ingest waits for another one on the same checkpoint before giving up
    ingest_lock_wait_seconds: int = 120
    # the landing contract (include/storage/landing.py, README "Use your own feed"): a file is read once it is
    # complete: its marker <name>LANDING_MARKER_SUFFIX exists, or (unless LANDING_REQUIRE_MARKER) it has not
    # changed for LANDING_SETTLE_SECONDS; a file waiting longer than LANDING_STUCK_MINUTES raises a WARNING
    landing_settle_seconds: float = 2.0
    landing_marker_suffix: str = ".done"
    landing_require_marker: bool = False
    landing_stuck_minutes: int = 15
    # bounded input: a file larger than MAX_FILE_BYTES, or a compressed one that expands past
    # MAX_DECOMPRESSED_BYTES, is quarantined with the reason, never read whole into memory
    max_file_bytes: ByteSize = ByteSize("256m")
    max_decompressed_bytes: ByteSize = ByteSize("256m")
    # directories of the Airflow design
    landing_dir: Path = PROJECT_ROOT / "data" / "landing"
    archive_dir: Path = PROJECT_ROOT / "data" / "archive"
    checkpoint_dir: Path = PROJECT_ROOT / "data" / "checkpoints" / "ecommerce_events"
    quarantine_dir: Path = PROJECT_ROOT / "data" / "quarantine"
    # archived files older than this many days are deleted by the ecommerce_archive_retention DAG (0 = keep all);
    # a backfill can only re-read windows still in the archive
    archive_retention_days: int = 30
    # how much history one run of a backfill re-derives at once (one Spark job, one transaction); the backfill's
    # other runs in that span are closed without starting (include/airflow/backfill_runs.py)
    backfill_chunk_minutes: int = 360
    # housekeeping (include/ops/housekeeping.py, the daily ecommerce_housekeeping DAG); 0 days keeps all.
    # Airflow's metadata (runs, task instances, XComs, audit log, jobs, asset events) and the task log files under
    # $AIRFLOW_HOME/logs share one retention: a task log is only reachable through its run in the UI.
    airflow_metadata_retention_days: int = 30
    # data_quality_metrics, published ledger rows, rule_violations, dead_letter_moves, expired or quarantined
    # deliveries and recovered alert state (include/ops/housekeeping.py HISTORY_RULES)
    pipeline_history_retention_days: int = 90
    # dead letters that were replayed or resolved (open ones are never deleted)
    resolved_dead_letter_retention_days: int = 30
    # where `make run` writes the components' output (<component>.log); each file above COMPONENT_LOG_MAX_BYTES
    # (0 = never rotate) is rotated into .1 .. .COMPONENT_LOG_BACKUPS, as is ALERT_FILE
    pipeline_log_dir: Path = PROJECT_ROOT / "data" / "logs"
    component_log_max_bytes: ByteSize = ByteSize("50m")
    component_log_backups: int = 3
    # Great Expectations project (suite store, validation results, Data Docs under gx/uncommitted/data_docs)
    great_expectations_dir: Path = PROJECT_ROOT / "data" / "great_expectations"
    # validation results kept for the Data Docs (older ones are pruned; the database keeps every count)
    data_docs_keep_runs: int = 200
    # alerts (include/ops/alerts/): JSON-lines file of every WARNING and above; a condition already alerted is
    # repeated only after the cool-down; CRITICAL when no data arrived for ALERT_NO_DATA_MINUTES while
    # FEED_EXPECTED (make run: true), or dead letters grow faster than ALERT_DEAD_LETTERS_PER_MINUTE
    alert_file: Path = PROJECT_ROOT / "data" / "logs" / "alerts.jsonl"
    alert_cooldown_minutes: int = 60
    # one check raises at most this many alerts in a run (one per foreign file, one per new column); the rest are
    # recorded as sent and counted in one more alert
    alert_max_per_run: int = 5
    feed_expected: bool = False
    alert_no_data_minutes: int = 10
    alert_dead_letters_per_minute: float = 100.0
    alert_dead_letter_window_minutes: int = 5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); unset or empty variables keep defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = environ.get(field.name.upper(), "").strip()
            if not raw:
                continue
            kind = type(field.default)
            try:
                if kind is bool:
                    values[field.name] = raw.lower() in {"1", "true", "yes", "on"}
                elif issubclass(kind, Path):
                    values[field.name] = project_path(raw)
                else:
                    values[field.name] = kind(raw)
            except ValueError as error:
                raise SettingsError(
                    f"{field.name.upper()}={raw!r} is not a valid "
                    f"{'size in bytes (e.g. 33554432 or 32m)' if kind is ByteSize else kind.__name__}; "
                    f"unset it to use the default {field.default!r}"
                ) from error
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        # float() reads "inf", "-inf", "nan" and "1e999" (= inf), and nan fails no comparison: a non-finite
        # threshold would pass the checks below and then break the SQL it is put into (MAX_PRICE=inf)
        problems = [f"{field.name.upper()} must be a finite number, not {value}" for field in fields(self)
                    if isinstance(value := getattr(self, field.name), float) and not math.isfinite(value)]
        if self.max_files_per_trigger < 1:
            problems.append("MAX_FILES_PER_TRIGGER must be at least 1")
        if self.max_bytes_per_trigger < 0:
            problems.append("MAX_BYTES_PER_TRIGGER must not be negative (0 = batches by file count only)")
        if not 0 <= self.min_validity_rate <= 100:
            problems.append("MIN_VALIDITY_RATE is a percentage between 0 and 100")
        if self.max_price <= 0:
            problems.append("MAX_PRICE must be positive")
        if self.landing_settle_seconds < 0:
            problems.append("LANDING_SETTLE_SECONDS must not be negative")
        if self.landing_stuck_minutes < 1:
            problems.append("LANDING_STUCK_MINUTES must be at least 1")
        if not self.landing_marker_suffix.startswith(".") or "/" in self.landing_marker_suffix \
                or len(self.landing_marker_suffix) < 2:
            problems.append("LANDING_MARKER_SUFFIX must be a file suffix such as .done")
        if self.max_file_bytes < 1 or self.max_decompressed_bytes < 1:
            problems.append("MAX_FILE_BYTES and MAX_DECOMPRESSED_BYTES must be positive")
        problems += severity_problems(self.rule_severity, "RULE_SEVERITY")
        problems += extra_problems(self.postgres_extra, "POSTGRES_EXTRA")
        if self.late_arrival_minutes < 0:
            problems.append("LATE_ARRIVAL_MINUTES must not be negative")
        if self.max_retries < 0 or self.initial_retry_delay < 0 or self.retry_backoff_factor < 1:
            problems.append("MAX_RETRIES >= 0, INITIAL_RETRY_DELAY >= 0 and RETRY_BACKOFF_FACTOR >= 1")
        if self.circuit_breaker_threshold < 1:
            problems.append("CIRCUIT_BREAKER_THRESHOLD must be at least 1")
        if self.backfill_chunk_minutes < 1:
            problems.append("BACKFILL_CHUNK_MINUTES must be at least 1")
        if self.archive_retention_days < 0:
            problems.append("ARCHIVE_RETENTION_DAYS must not be negative (0 keeps the archive forever)")
        problems += [f"{name} must not be negative (0 keeps everything)" for name, days in (
            ("AIRFLOW_METADATA_RETENTION_DAYS", self.airflow_metadata_retention_days),
            ("PIPELINE_HISTORY_RETENTION_DAYS", self.pipeline_history_retention_days),
            ("RESOLVED_DEAD_LETTER_RETENTION_DAYS", self.resolved_dead_letter_retention_days)) if days < 0]
        if self.component_log_max_bytes < 0:
            problems.append("COMPONENT_LOG_MAX_BYTES must not be negative (0 never rotates the component logs)")
        if self.component_log_backups < 0:
            problems.append("COMPONENT_LOG_BACKUPS must not be negative (0 keeps no rotated copy)")
        if self.alert_cooldown_minutes < 0 or self.alert_no_data_minutes < 1 or self.alert_dead_letter_window_minutes < 1:
            problems.append("ALERT_COOLDOWN_MINUTES >= 0, ALERT_NO_DATA_MINUTES >= 1, ALERT_DEAD_LETTER_WINDOW_MINUTES >= 1")
        if self.alert_max_per_run < 1:
            problems.append("ALERT_MAX_PER_RUN must be at least 1")
        if problems:
            raise SettingsError("; ".join(problems))

    @property
    def postgres_conninfo(self) -> str:
        """A libpq connection string (keyword form, so no URL-quoting surprises in passwords), with the libpq
        parameters of ``postgres_extra`` (sslmode, options, ...)."""
        return libpq_conninfo(self.postgres_host, self.postgres_port, self.postgres_db, self.postgres_user,
                              self.postgres_password, self.postgres_extra)

    @property
    def postgres_parameters(self) -> dict[str, str]:
        """The libpq parameters of ``postgres_extra`` alone (for a driver that takes them apart: SQLAlchemy)."""
        return libpq_parameters(self.postgres_extra)


# Connection fields that the extra cannot override: they are the connection's own.
_FIELDS = frozenset({"host", "port", "dbname", "user", "password"})


def libpq_parameters(extra: str | Mapping[str, object] | None) -> dict[str, str]:
    """The libpq parameters in an Airflow connection's extra (a JSON text or a mapping): the keys libpq knows
    (sslmode, sslrootcert, options, connect_timeout, target_session_attrs, ...), as the postgres provider's hook
    passes them, minus the connection's own fields. Other keys (the provider's ``cursor``, ``sqlalchemy_scheme``,
    ...) are not libpq's and are left out."""
    if not extra:
        return {}
    values = json.loads(extra) if isinstance(extra, str) else dict(extra)
    if not isinstance(values, dict):
        raise SettingsError(f"a connection's extra must be a JSON object, not {type(values).__name__}")
    from psycopg import pq

    known = {option.keyword.decode() for option in pq.Conninfo.get_defaults()} - _FIELDS
    return {key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in values.items() if key in known and value is not None}


def libpq_conninfo(host: str, port: int | str, dbname: str, user: str, password: str,
                   extra: str | Mapping[str, object] | None = None) -> str:
    """A libpq connection string of a connection's fields and the libpq parameters of its extra."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(host=host, port=port, dbname=dbname, user=user, password=password,
                         **libpq_parameters(extra))


def json_object(raw: str, name: str, shape: str) -> tuple[dict, list[str]]:
    """The JSON object in ``raw`` (empty text: ``{}``), or the problem with it; ``shape`` tells what it must be."""
    if not raw.strip():
        return {}, []
    try:
        value = json.loads(raw)
    except ValueError as error:
        return {}, [f"{name} must be a JSON object {shape} ({error})"]
    if not isinstance(value, dict):
        return {}, [f"{name} must be a JSON object {shape}, not {type(value).__name__}"]
    return value, []


def extra_problems(raw: str, name: str) -> list[str]:
    """What is wrong with a connection extra given as JSON text."""
    return json_object(raw, name, 'such as {"sslmode": "require"}')[1]


SEVERITIES = ("warn", "drop", "fail")


def severity_problems(raw: str, name: str) -> list[str]:
    """What is wrong with a rule-severity JSON object (the rule names are checked against the contract by
    ``include.contract.rules.severities``)."""
    value, problems = json_object(raw, name, "of rule: warn | drop | fail")
    return problems + [f"{name}: {rule!r} has severity {level!r}; it must be one of {', '.join(SEVERITIES)}"
                       for rule, level in value.items() if level not in SEVERITIES]


def get_settings() -> Settings:
    return Settings.from_env()
