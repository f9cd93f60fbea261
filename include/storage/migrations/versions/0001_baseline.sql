-- Revision 0001 of the analytics schema, the baseline (include/storage/migrations/, docs/schema.md).
-- The schema script every start of the releases before versioned migrations applied, as the last of them left it,
-- then the view audit_candidates as their start-up built it from the column table (at the end of this file).
-- Idempotent on purpose: on a new database it creates the schema; on a database of a release before versioning
-- (no version table) it brings it to this schema as that release's next start would have, and the version table
-- then records 0001. A released revision never changes: a change is a new revision (make migration NAME="...").
-- Tables and columns of the original system keep their names; everything added is an extension.

-- Good events, one row per event_id (canonical schema v3 plus lineage).
CREATE TABLE IF NOT EXISTS ecommerce_events (
    event_id         TEXT         PRIMARY KEY,
    user_id          INTEGER,                 -- NULL for anonymous visitors (view / search only)
    session_id       TEXT,
    event_type       TEXT         NOT NULL,
    product_id       INTEGER,
    category         TEXT,
    price            NUMERIC(12, 2),
    quantity         INTEGER,
    total_amount     NUMERIC(14, 2),
    user_segment     TEXT,
    event_time       TIMESTAMPTZ  NOT NULL,
    device_type      TEXT,
    browser          TEXT,
    geo_country      TEXT,
    geo_city         TEXT,
    referrer         TEXT,
    campaign_id      TEXT,
    is_late_arrival  BOOLEAN      NOT NULL DEFAULT FALSE,
    processed_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
    -- lineage
    schema_version   TEXT         NOT NULL,
    source_file      TEXT         NOT NULL,
    source_line      INTEGER      NOT NULL,
    airflow_run_id   TEXT,
    spark_query_id   UUID,
    spark_batch_id   BIGINT
);
CREATE INDEX IF NOT EXISTS ix_ecommerce_events_event_time ON ecommerce_events (event_time);
-- No index on event_type: six values, so no query selects by it alone (the views aggregate whole days, and a
-- filter by type over a time range goes through event_time); maintaining it cost every stored row a B-tree
-- insert (docs/performance.md). Databases created before drop it here.
DROP INDEX IF EXISTS ix_ecommerce_events_event_type;

-- How many transactions have held the publish lock (every writer of ecommerce_events takes it and moves this
-- on, committed or rolled back with its writes). An audit that saw the same generation as its publish knows
-- no event was stored in between, so its candidates are inserted without ON CONFLICT (include/publish/sql.py).
CREATE TABLE IF NOT EXISTS ecommerce_events_generation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  BIGINT  NOT NULL DEFAULT 0
);
INSERT INTO ecommerce_events_generation (id) VALUES (1) ON CONFLICT (id) DO NOTHING;

-- Rows that could not become events, with the raw input and every reason.
CREATE TABLE IF NOT EXISTS dead_letter_events (
    id                 BIGSERIAL PRIMARY KEY,
    event_id           TEXT,
    raw_data           TEXT        NOT NULL,
    validation_errors  TEXT        NOT NULL,
    failed_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    error_kind         TEXT        NOT NULL DEFAULT 'parse',   -- 'parse' (cannot be typed) or 'rule' (contract)
    failed_rules       TEXT[]      NOT NULL DEFAULT '{}',      -- names of the broken rules (include/contract/rules.py)
    -- lineage
    schema_version     TEXT,
    source_file        TEXT,
    source_line        INTEGER,
    airflow_run_id     TEXT,
    spark_query_id     UUID,
    spark_batch_id     BIGINT
);
CREATE INDEX IF NOT EXISTS ix_dead_letter_events_failed_at ON dead_letter_events (failed_at);
CREATE INDEX IF NOT EXISTS ix_dead_letter_events_rules ON dead_letter_events USING gin (failed_rules);

-- One row per processed batch; total_records = valid_records + invalid_records + duplicate_records.
CREATE TABLE IF NOT EXISTS data_quality_metrics (
    id                  BIGSERIAL PRIMARY KEY,
    batch_id            VARCHAR(128) NOT NULL,
    total_records       INTEGER      NOT NULL,
    valid_records       INTEGER      NOT NULL,
    validity_rate       NUMERIC(6, 2),
    recorded_at         TIMESTAMPTZ  NOT NULL DEFAULT now(),
    invalid_records     INTEGER      NOT NULL DEFAULT 0,
    duplicate_records   INTEGER      NOT NULL DEFAULT 0,
    late_records        INTEGER      NOT NULL DEFAULT 0,
    quarantined_files   INTEGER      NOT NULL DEFAULT 0,
    processing_time_ms  BIGINT,
    throughput          NUMERIC(14, 2),          -- records per second
    airflow_run_id      TEXT,
    spark_query_id      UUID,
    spark_batch_id      BIGINT,
    CONSTRAINT data_quality_metrics_counts_add_up
        CHECK (total_records = valid_records + invalid_records + duplicate_records)
);
-- valid rows stored with at least one violation of a rule of severity warn (they count as valid), and the
-- thresholds and severities in force when the batch was published, so a past batch's rules are known.
ALTER TABLE data_quality_metrics ADD COLUMN IF NOT EXISTS warned_records INTEGER NOT NULL DEFAULT 0;
ALTER TABLE data_quality_metrics ADD COLUMN IF NOT EXISTS rules_in_force JSONB;

-- Violations of rules of severity warn by stored rows (include/contract/rules.py): the row is in
-- ecommerce_events, this says which rule it broke and why. One row per (event, rule).
CREATE TABLE IF NOT EXISTS rule_violations (
    id              BIGSERIAL   PRIMARY KEY,
    event_id        TEXT        NOT NULL,
    rule            TEXT        NOT NULL,
    severity        TEXT        NOT NULL DEFAULT 'warn',
    reason          TEXT        NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    source_file     TEXT,
    source_line     INTEGER,
    airflow_run_id  TEXT,
    spark_query_id  UUID,
    spark_batch_id  BIGINT
);
CREATE INDEX IF NOT EXISTS ix_rule_violations_recorded ON rule_violations (recorded_at);
CREATE INDEX IF NOT EXISTS ix_rule_violations_run ON rule_violations (airflow_run_id);
CREATE UNIQUE INDEX IF NOT EXISTS ux_rule_violations_event_rule ON rule_violations (event_id, rule);

-- Files that could not be read at all (no known header, not UTF-8 text, empty); moved to QUARANTINE_DIR.
CREATE TABLE IF NOT EXISTS quarantined_files (
    id              BIGSERIAL PRIMARY KEY,
    source_file     TEXT        NOT NULL,
    quarantine_path TEXT        NOT NULL,
    reason          TEXT        NOT NULL,
    quarantined_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    airflow_run_id  TEXT,
    spark_query_id  UUID,
    spark_batch_id  BIGINT
);

-- Ledger of Spark batches. The Spark job writes a row when a batch is completely staged (in the same
-- transaction as its quarantined files), so a batch Spark replays after a crash is recognised and not
-- staged twice; the publish step sets published_at in the same transaction as the batch's rows, so a batch
-- is never published twice and a batch staged by a failed run is published by the next one.
CREATE TABLE IF NOT EXISTS pipeline_batch_ledger (
    spark_query_id       UUID        NOT NULL,
    spark_batch_id       BIGINT      NOT NULL,
    airflow_run_id       TEXT,
    input_files          INTEGER     NOT NULL,
    input_rows           INTEGER     NOT NULL,
    quarantined_files    INTEGER     NOT NULL DEFAULT 0,
    late_rows            INTEGER     NOT NULL DEFAULT 0,
    started_at           TIMESTAMPTZ NOT NULL,
    staged_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at         TIMESTAMPTZ,
    published_by_run_id  TEXT,
    PRIMARY KEY (spark_query_id, spark_batch_id)
);
CREATE INDEX IF NOT EXISTS ix_pipeline_batch_ledger_unpublished
    ON pipeline_batch_ledger (staged_at) WHERE published_at IS NULL;

-- Typed rows of a Spark batch waiting for the audit and the publish. A regular (logged) table: once the
-- Spark checkpoint has moved on and the files are archived, these rows are the only copy until published.
CREATE TABLE IF NOT EXISTS staging_events (
    staging_row_id   BIGSERIAL   PRIMARY KEY,
    spark_query_id   UUID        NOT NULL,
    spark_batch_id   BIGINT      NOT NULL,
    spark_partition  INTEGER     NOT NULL,
    event_id         TEXT,
    user_id          INTEGER,
    session_id       TEXT,
    event_type       TEXT,
    product_id       INTEGER,
    category         TEXT,
    price            NUMERIC(12, 2),
    quantity         INTEGER,
    total_amount     NUMERIC(14, 2),
    user_segment     TEXT,
    event_time       TIMESTAMPTZ,
    device_type      TEXT,
    browser          TEXT,
    geo_country      TEXT,
    geo_city         TEXT,
    referrer         TEXT,
    campaign_id      TEXT,
    is_late_arrival  BOOLEAN,
    schema_version   TEXT,
    source_file      TEXT        NOT NULL,
    source_line      INTEGER     NOT NULL,
    raw_data         TEXT,
    parse_errors     TEXT
);
CREATE INDEX IF NOT EXISTS ix_staging_events_batch ON staging_events (spark_query_id, spark_batch_id);

-- What the Great Expectations suite validates in one run is the view audit_candidates (created at the
-- end of this file from the column table): the staged rows of the batches the audit
-- pinned that parsed, one per event_id (the first occurrence), minus event_ids already stored. The rows are
-- validated where they lie, in staging_events; an audit writes only these two small tables, rebuilt by
-- every audit (include/quality/audit.py prepare_candidates):
-- the batches it pinned,
CREATE UNLOGGED TABLE IF NOT EXISTS audit_pinned_batches (
    spark_query_id  UUID    NOT NULL,
    spark_batch_id  BIGINT  NOT NULL,
    PRIMARY KEY (spark_query_id, spark_batch_id)
);
-- and the parsed rows of those batches that are not candidates: a later occurrence of an event_id, or an
-- event_id already stored (usually none, or a few).
CREATE UNLOGGED TABLE IF NOT EXISTS audit_excluded_rows (staging_row_id BIGINT NOT NULL);
-- An older deployment has audit_candidates as a table (a copy of every candidate row): the view replaces it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('audit_candidates') AND relkind = 'r') THEN
        DROP TABLE audit_candidates;
    END IF;
END $$;

-- Analytics views of the original system (same names; `CREATE OR REPLACE` keeps them current).
CREATE OR REPLACE VIEW v_hourly_event_summary AS
SELECT date_trunc('hour', event_time)                               AS hour,
       event_type,
       count(*)                                                     AS event_count,
       count(DISTINCT user_id)                                      AS unique_users,
       count(DISTINCT session_id)                                   AS unique_sessions,
       coalesce(sum(total_amount) FILTER (WHERE event_type = 'purchase'), 0) AS revenue,
       count(*) FILTER (WHERE is_late_arrival)                      AS late_events
  FROM ecommerce_events
 GROUP BY 1, 2;

CREATE OR REPLACE VIEW v_category_performance AS
SELECT coalesce(category, 'unknown')                                AS category,
       count(*) FILTER (WHERE event_type = 'view')                  AS views,
       count(*) FILTER (WHERE event_type = 'add_to_cart')           AS cart_adds,
       count(*) FILTER (WHERE event_type = 'wishlist')              AS wishlists,
       count(*) FILTER (WHERE event_type = 'purchase')              AS purchases,
       coalesce(sum(total_amount) FILTER (WHERE event_type = 'purchase'), 0) AS revenue,
       round(100.0 * count(*) FILTER (WHERE event_type = 'purchase')
             / nullif(count(*) FILTER (WHERE event_type = 'view'), 0), 2) AS view_to_purchase_pct
  FROM ecommerce_events
 GROUP BY 1;

CREATE OR REPLACE VIEW v_user_segment_analysis AS
SELECT coalesce(user_segment, CASE WHEN user_id IS NULL THEN 'anonymous' ELSE 'not recorded' END) AS user_segment,
       count(DISTINCT user_id)                                      AS users,
       count(*)                                                     AS events,
       count(*) FILTER (WHERE event_type = 'purchase')              AS purchases,
       coalesce(sum(total_amount) FILTER (WHERE event_type = 'purchase'), 0) AS revenue,
       round(avg(total_amount) FILTER (WHERE event_type = 'purchase'), 2) AS avg_order_value
  FROM ecommerce_events
 GROUP BY 1;

CREATE OR REPLACE VIEW v_data_quality_dashboard AS
WITH batches AS (
    SELECT date_trunc('hour', recorded_at)                          AS hour,
           count(*)                                                 AS batches,
           sum(total_records)                                       AS total_records,
           sum(valid_records)                                       AS valid_records,
           sum(invalid_records)                                     AS invalid_records,
           sum(duplicate_records)                                   AS duplicate_records,
           sum(late_records)                                        AS late_records,
           round(avg(processing_time_ms))                           AS avg_processing_time_ms,
           sum(processing_time_ms)                                  AS processing_time_ms,
           sum(warned_records)                                      AS warned_records
      FROM data_quality_metrics
     GROUP BY 1
), quarantine AS (
    -- every quarantined file, including the empty ones the DAG moves aside before Spark runs
    SELECT date_trunc('hour', quarantined_at) AS hour, count(*) AS quarantined_files
      FROM quarantined_files GROUP BY 1
)
SELECT hour,
       coalesce(b.batches, 0)                                       AS batches,
       coalesce(b.total_records, 0)                                 AS total_records,
       coalesce(b.valid_records, 0)                                 AS valid_records,
       coalesce(b.invalid_records, 0)                               AS invalid_records,
       coalesce(b.duplicate_records, 0)                             AS duplicate_records,
       coalesce(b.late_records, 0)                                  AS late_records,
       coalesce(q.quarantined_files, 0)                             AS quarantined_files,
       round(100.0 * b.valid_records / nullif(b.valid_records + b.invalid_records, 0), 2) AS validity_rate,
       b.avg_processing_time_ms,
       round(b.total_records * 1000.0 / nullif(b.processing_time_ms, 0), 2) AS throughput,
       -- valid rows stored with a warn-level violation (rule_violations has each one)
       coalesce(b.warned_records, 0)                                AS warned_records
  FROM batches b FULL JOIN quarantine q USING (hour);

-- State of the circuit breaker (include/ops/circuit_breaker.py): one row, shared by every run.
CREATE TABLE IF NOT EXISTS pipeline_circuit_breaker (
    id                    INTEGER     PRIMARY KEY CHECK (id = 1),
    state                 TEXT        NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    consecutive_failures  INTEGER     NOT NULL DEFAULT 0,
    opened_at             TIMESTAMPTZ,
    last_error            TEXT,
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Attempts to stage each landed file were counted here by its path; they are counted per delivery now
-- (deliveries.attempts), since a path can be delivered again.
DROP TABLE IF EXISTS file_attempts;

-- ---------------------------------------------------------------------------------------------------------
-- Backfills from the archive and dead-letter replay (include/publish/backfill.py, include/publish/replay.py,
-- docs/operations.md "Backfills and replays").

-- Where a dead-lettered row stands: 'open' (waiting), 'replayed' (the replay DAG re-validated it and it is
-- now in ecommerce_events), 'resolved' (a backfill re-derived it into ecommerce_events, or its event_id was
-- stored meanwhile). Only 'open' rows are live dead letters; the others are their history.
ALTER TABLE dead_letter_events ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'replayed', 'resolved'));
ALTER TABLE dead_letter_events ADD COLUMN IF NOT EXISTS replay_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter_events ADD COLUMN IF NOT EXISTS last_replayed_at TIMESTAMPTZ;
ALTER TABLE dead_letter_events ADD COLUMN IF NOT EXISTS status_changed_at TIMESTAMPTZ;
-- The row as Spark typed it (the audit's view of it), kept for rule-kind dead letters so a replay can
-- re-validate it with the current suite without re-reading the file.
ALTER TABLE dead_letter_events ADD COLUMN IF NOT EXISTS typed_row JSONB;
CREATE INDEX IF NOT EXISTS ix_dead_letter_events_source ON dead_letter_events (source_file, source_line);
CREATE INDEX IF NOT EXISTS ix_dead_letter_events_open ON dead_letter_events (failed_at) WHERE status = 'open';

-- One row per backfill batch: the archived files of one DAG run's data interval, re-read in batch mode.
CREATE TABLE IF NOT EXISTS pipeline_backfill_ledger (
    backfill_batch_id  UUID        PRIMARY KEY,    -- also staging_events.spark_query_id of its rows
    airflow_run_id     TEXT        NOT NULL,
    window_start       TIMESTAMPTZ NOT NULL,
    window_end         TIMESTAMPTZ NOT NULL,
    input_files        INTEGER     NOT NULL,
    input_rows         INTEGER     NOT NULL,
    source_files       TEXT[]      NOT NULL,       -- lineage names (landing paths) of the re-read files
    started_at         TIMESTAMPTZ NOT NULL,
    staged_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at       TIMESTAMPTZ,
    summary            JSONB                        -- counts of the publish: kept, moved, inserted, duplicates
);
CREATE INDEX IF NOT EXISTS ix_pipeline_backfill_ledger_run ON pipeline_backfill_ledger (airflow_run_id);

-- Every move of a row between ecommerce_events and dead_letter_events after its first publish.
CREATE TABLE IF NOT EXISTS dead_letter_moves (
    id              BIGSERIAL   PRIMARY KEY,
    moved_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    direction       TEXT        NOT NULL CHECK (direction IN ('to_events', 'to_dead_letter')),
    cause           TEXT        NOT NULL CHECK (cause IN ('backfill', 'replay')),
    event_id        TEXT,
    source_file     TEXT,
    source_line     INTEGER,
    dead_letter_id  BIGINT,
    failed_rules    TEXT[]      NOT NULL DEFAULT '{}',   -- the rules broken now ('to_dead_letter') or before
    airflow_run_id  TEXT
);
CREATE INDEX IF NOT EXISTS ix_dead_letter_moves_source ON dead_letter_moves (source_file, source_line);
-- who approved a replay (the Airflow user who chose "Approve" in the replay DAG's approval step); NULL: a backfill
ALTER TABLE dead_letter_moves ADD COLUMN IF NOT EXISTS approved_by TEXT;

-- What a backfill or a replay validates with the same suite (a table of its own, so neither ever touches
-- the every-minute runs' audit tables). Used under the advisory lock "ecommerce_events revalidation".
CREATE UNLOGGED TABLE IF NOT EXISTS revalidation_candidates (LIKE staging_events);
CREATE INDEX IF NOT EXISTS ix_revalidation_candidates_row ON revalidation_candidates (staging_row_id);

-- ===== Alerts (include/ops/alerts/) =====
-- One row per alert condition (quality_breach, task_failed, circuit_breaker_open, no_fresh_data,
-- dead_letter_growth): what was last said about it, so a per-minute DAG alerts once per condition, again only
-- when it changes or after ALERT_COOLDOWN_MINUTES, and once more when it recovers.
CREATE TABLE IF NOT EXISTS pipeline_alerts (
    alert_key     TEXT        PRIMARY KEY,
    level         TEXT        NOT NULL,
    fingerprint   TEXT        NOT NULL,
    active        BOOLEAN     NOT NULL DEFAULT false,
    last_sent_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    suppressed    INTEGER     NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- the freshness check reads the newest staged batch
CREATE INDEX IF NOT EXISTS ix_pipeline_batch_ledger_staged_at ON pipeline_batch_ledger (staged_at);

-- ===== Columns the contract does not know (include/contract/versions.py match_header) =====
-- A feed file's columns are matched by name; the values of columns the contract lacks are kept per row as
-- JSON ({"coupon_code": "X10"}), on the stored event and on its dead letter, until the contract learns them.
-- Added at the end of each table, so the column table (include/contract/columns.py) lists it last.
ALTER TABLE staging_events ADD COLUMN IF NOT EXISTS rescued_data JSONB;
ALTER TABLE revalidation_candidates ADD COLUMN IF NOT EXISTS rescued_data JSONB;
ALTER TABLE ecommerce_events ADD COLUMN IF NOT EXISTS rescued_data JSONB;
ALTER TABLE dead_letter_events ADD COLUMN IF NOT EXISTS rescued_data JSONB;
-- Every column name the feed has carried that the contract does not know, when and where it first came:
-- the WARNING "new column" is raised once, when its row is inserted here.
CREATE TABLE IF NOT EXISTS feed_columns_seen (
    column_name   TEXT        PRIMARY KEY,
    first_file    TEXT        NOT NULL,
    sample_value  TEXT,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    airflow_run_id TEXT
);

-- The hourly revenue rollup the example downstream DAG `ecommerce_hourly_revenue` maintains: one row per UTC
-- hour with purchases, recomputed whole for every hour a publish, backfill or replay touched (asset events of
-- `ecommerce_events`), so running it twice over the same hours changes nothing.
CREATE TABLE IF NOT EXISTS hourly_revenue (
    hour            TIMESTAMPTZ   PRIMARY KEY,     -- the start of the UTC hour
    purchases       INTEGER       NOT NULL,
    units           BIGINT        NOT NULL,
    revenue         NUMERIC(16, 2) NOT NULL,
    buyers          INTEGER       NOT NULL,        -- distinct user_id
    refreshed_at    TIMESTAMPTZ   NOT NULL DEFAULT now(),
    airflow_run_id  TEXT                           -- the run of ecommerce_hourly_revenue that computed it
);

-- ===== Deliveries (include/storage/deliveries.py, docs/architecture.md "Deliveries") =====
-- Every file that landed in LANDING_DIR, one row per delivery (a name delivered twice is two), written in the
-- transaction that renamed it out of LANDING_DIR. The Spark stream reads the claimed ones by id, in order.
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id     BIGSERIAL   PRIMARY KEY,
    file_name       TEXT        NOT NULL,                -- the name it landed under
    source_file     TEXT        NOT NULL,                -- its landing path (the lineage its rows carry)
    size_bytes      BIGINT      NOT NULL,                -- its size when claimed: what the ingest reads
    modified_at     TIMESTAMPTZ,                         -- the producer's modification time (never used to decide)
    claimed_at      TIMESTAMPTZ NOT NULL DEFAULT now(),  -- when the pipeline took it: its landing time
    completed_by    TEXT        NOT NULL,                -- settled | marker | grace | recovered
    status          TEXT        NOT NULL DEFAULT 'claimed'
                    CHECK (status IN ('claimed', 'staged', 'archived', 'quarantined', 'expired')),
    path            TEXT        NOT NULL,                -- where the file is now
    attempts        INTEGER     NOT NULL DEFAULT 0,      -- ingest attempts that crashed reading it
    spark_query_id  UUID,                                -- the batch that staged it
    spark_batch_id  BIGINT,
    rows_staged     INTEGER,
    staged_at       TIMESTAMPTZ,
    finalized_at    TIMESTAMPTZ,                         -- moved to the archive or the quarantine
    published_at    TIMESTAMPTZ                          -- its batch was published
);
CREATE INDEX IF NOT EXISTS ix_deliveries_claimed_at ON deliveries (claimed_at);
CREATE INDEX IF NOT EXISTS ix_deliveries_waiting ON deliveries (delivery_id) WHERE status = 'claimed';
CREATE INDEX IF NOT EXISTS ix_deliveries_batch ON deliveries (spark_query_id, spark_batch_id);

-- What waits in LANDING_DIR and why (still changing, waiting for its marker, a temporary name, ...), rebuilt by
-- every look (include/storage/landing.py take_stock): since when each was seen, for the "waiting" WARNING.
CREATE TABLE IF NOT EXISTS landing_waits (
    name             TEXT        PRIMARY KEY,
    inode            BIGINT      NOT NULL,
    size_bytes       BIGINT      NOT NULL,
    mtime_ns         BIGINT      NOT NULL,
    ctime_ns         BIGINT      NOT NULL,
    first_seen_at    TIMESTAMPTZ NOT NULL,
    unchanged_since  TIMESTAMPTZ NOT NULL,
    reason           TEXT        NOT NULL
);

-- The ingest's fencing token per checkpoint (include/storage/locks.py Fence): every write of an ingest checks
-- that the epoch it took with the checkpoint's lock is still the newest.
CREATE TABLE IF NOT EXISTS ingest_fence (
    name      TEXT        PRIMARY KEY,
    epoch     BIGINT      NOT NULL,
    taken_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every row carries its delivery: (delivery_id, source_line) names one line of one delivered file.
ALTER TABLE staging_events ADD COLUMN IF NOT EXISTS delivery_id BIGINT;
ALTER TABLE revalidation_candidates ADD COLUMN IF NOT EXISTS delivery_id BIGINT;
ALTER TABLE ecommerce_events ADD COLUMN IF NOT EXISTS delivery_id BIGINT;
ALTER TABLE dead_letter_events ADD COLUMN IF NOT EXISTS delivery_id BIGINT;
ALTER TABLE rule_violations ADD COLUMN IF NOT EXISTS delivery_id BIGINT;
ALTER TABLE dead_letter_moves ADD COLUMN IF NOT EXISTS delivery_id BIGINT;
ALTER TABLE quarantined_files ADD COLUMN IF NOT EXISTS delivery_id BIGINT;
-- when detect_work's WARNING named this quarantined file (NULL: not yet)
ALTER TABLE quarantined_files ADD COLUMN IF NOT EXISTS alerted_at TIMESTAMPTZ;
ALTER TABLE pipeline_backfill_ledger ADD COLUMN IF NOT EXISTS deliveries BIGINT[] NOT NULL DEFAULT '{}';
-- A backfill asks, per re-read line, which event and which dead letter that line is: by delivery and line. (The
-- (source_file, source_line) index it replaces could not tell two deliveries of one name apart.)
CREATE INDEX IF NOT EXISTS ix_ecommerce_events_delivery_line ON ecommerce_events (delivery_id, source_line);
CREATE INDEX IF NOT EXISTS ix_dead_letter_events_delivery_line ON dead_letter_events (delivery_id, source_line);
DROP INDEX IF EXISTS ix_ecommerce_events_source;
CREATE INDEX IF NOT EXISTS ix_quarantined_files_unalerted ON quarantined_files (id) WHERE alerted_at IS NULL;
-- quarantined files recorded before the delivery ledger were alerted (or not) by the release that recorded them
UPDATE quarantined_files SET alerted_at = quarantined_at WHERE alerted_at IS NULL AND delivery_id IS NULL;

-- ===== The view audit_candidates, as the start-up of the releases before versioning built it =====
-- (include/storage/schema.py create_audit_candidates_view: the candidate columns of the column table as they
-- stood, include/contract/columns.py CANDIDATE_COLUMNS). A contract column added later rebuilds it in its own
-- revision (include/storage/migrations/columns.py).
DROP VIEW IF EXISTS audit_candidates;
CREATE VIEW audit_candidates AS
SELECT s.staging_row_id, s.spark_query_id, s.spark_batch_id, s.spark_partition, s.event_id, s.user_id, s.session_id, s.event_type, s.product_id, s.category, s.price, s.quantity, s.total_amount, s.user_segment, s.event_time, s.device_type, s.browser, s.geo_country, s.geo_city, s.referrer, s.campaign_id, s.is_late_arrival, s.schema_version, s.source_file, s.source_line, s.rescued_data, s.delivery_id
  FROM staging_events s
  JOIN audit_pinned_batches p ON (p.spark_query_id, p.spark_batch_id) = (s.spark_query_id, s.spark_batch_id)
 WHERE s.parse_errors IS NULL
   AND NOT EXISTS (SELECT 1 FROM audit_excluded_rows x WHERE x.staging_row_id = s.staging_row_id);
