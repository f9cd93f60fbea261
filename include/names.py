"""Names other code and people rely on, each written once: DAG ids, Airflow connection ids, lock keys.

Pure constants (no imports), so the Spark job, the Airflow tasks, the UI and the tooling share them.
"""

from __future__ import annotations

# DAGs
DAG_ID = "ecommerce_events"
REPLAY_DAG_ID = "ecommerce_dlq_replay"
RETENTION_DAG_ID = "ecommerce_archive_retention"
HOUSEKEEPING_DAG_ID = "ecommerce_housekeeping"  # prunes Airflow metadata, logs and pipeline history daily
HOURLY_REVENUE_DAG_ID = "ecommerce_hourly_revenue"  # the example downstream DAG (scheduled on an asset)

# Airflow connections
POSTGRES_CONN_ID = "ecommerce_postgres"
SPARK_CONN_ID = "spark_default"
SLACK_CONN_ID = "slack_alerts"
AIRFLOW_API_CONN_ID = "airflow_api"  # Airflow's REST API: backfill runs' notes and the runs a chunk covered
METADATA_CONN_ID = "airflow_metadata"  # Airflow's own database, for `airflow db clean` in ecommerce_housekeeping

# PostgreSQL advisory locks (include.storage.locks), by what each one guards.
PUBLISH_LOCK = "ecommerce_events publish"            # every writer of ecommerce_events / dead_letter_events
REVALIDATION_LOCK = "ecommerce_events revalidation"  # revalidation_candidates: backfills, replays, retention
SCHEMA_LOCK = "ecommerce_events schema"              # migrating the schema (two starts at once)
INGEST_LOCK_PREFIX = "ecommerce_events ingest"       # + the checkpoint directory: one live query per checkpoint
CLAIM_LOCK = "ecommerce_events landing claim"        # claims out of LANDING_DIR: one at a time, ids in commit order
OWNER_CONN_ID = "ecommerce_postgres_owner"    # the schema's owner: the only one that runs DDL (start-up)
READER_CONN_ID = "ecommerce_postgres_reader"  # read-only: the UI pages (and analysts)

# PostgreSQL roles, when start-up creates them on the project's own server (docs/security.md): the connections'
# logins name them, so a database provisioned by its DBA may call them otherwise.
OWNER_ROLE = "ecommerce_owner"    # owns the database and its objects: DDL
WRITER_ROLE = "ecommerce_writer"  # the pipeline and the Spark executors: DML on the tables, no DDL
READER_ROLE = "ecommerce_reader"  # SELECT on the tables and views
METADATA_ROLE = "airflow"         # owns Airflow's metadata database, nothing of the analytics one
