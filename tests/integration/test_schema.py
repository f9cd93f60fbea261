"""The schema script against a real PostgreSQL: every `make once` / `make run` applies it, also concurrently."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from include.storage.staging import apply_schema

pytestmark = pytest.mark.integration


def test_the_schema_applied_by_several_processes_at_once_never_deadlocks(pipeline):
    """Two `make once` started together used to deadlock here (ALTER TABLE and CREATE OR REPLACE VIEW take
    the tables' locks in different orders); now one waits for the other and both succeed."""

    def apply() -> None:
        with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
            apply_schema(conn)

    for _ in range(5):
        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(apply) for _ in range(4)]:
                future.result()
    assert pipeline.scalar("SELECT count(*) FROM information_schema.columns "
                           "WHERE table_name = 'dead_letter_events' AND column_name = 'status'") == 1
