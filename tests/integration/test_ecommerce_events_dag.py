"""The walking skeleton end to end: generator files -> `make once` (a real `airflow dags test` with a real
spark-submit) -> a real PostgreSQL. Nothing is mocked."""

from __future__ import annotations

import pytest

from include.generator import EventGenerator

pytestmark = pytest.mark.integration


def generate(pipeline, files: int, rows: int, seed: int, **ratios: float) -> list:
    generator = EventGenerator(seed, **ratios)
    reports = []
    for index in range(files):
        version = ("v1", "v2", "v3")[index % 3]
        batch = generator.generate_batch(rows, version)
        reports.append(generator.last_report)
        generator.write_batch(batch, version, pipeline.landing_dir)
    return reports


def test_generated_rows_land_once_and_files_are_archived(pipeline):
    pipeline.reset()
    generate(pipeline, files=6, rows=250, seed=11)  # 6 files, MAX_FILES_PER_TRIGGER=4: two Spark batches
    landed = sorted(p.name for p in pipeline.landing_dir.glob("*.csv"))

    first = pipeline.once()
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 1500
    assert pipeline.scalar("SELECT count(DISTINCT source_file) FROM ecommerce_events") == 6
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events") == 0
    assert pipeline.query(
        "SELECT count(*), sum(total_records), sum(valid_records) FROM data_quality_metrics"
    ) == [(2, 1500, 1500)]
    # every row carries its lineage and the three schema versions were upcast
    assert pipeline.scalar(
        "SELECT count(*) FROM ecommerce_events WHERE airflow_run_id IS NULL OR spark_batch_id IS NULL "
        "OR source_line < 2 OR processed_at IS NULL"
    ) == 0
    assert {v for (v,) in pipeline.query("SELECT DISTINCT schema_version FROM ecommerce_events")} == {"v1", "v2", "v3"}
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events WHERE schema_version = 'v1' AND quantity <> 1") == 0
    # the analytics views of the original system answer over the new rows
    assert pipeline.scalar("SELECT sum(event_count) FROM v_hourly_event_summary") == 1500
    assert pipeline.scalar("SELECT sum(total_records) FROM v_data_quality_dashboard") == 1500
    assert pipeline.scalar("SELECT count(*) FROM v_category_performance") > 1
    assert pipeline.scalar("SELECT sum(events) FROM v_user_segment_analysis") == 1500
    # files moved out of the landing dir into the archive, by landing hour
    assert list(pipeline.landing_dir.glob("*.csv")) == []
    assert sorted(p.name for p in pipeline.archive_dir.glob("*/*/*.csv")) == landed

    second = pipeline.once()
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 1500
    assert pipeline.scalar("SELECT count(*) FROM data_quality_metrics") == 2


def test_bad_rows_are_dead_lettered_and_counts_add_up(pipeline):
    pipeline.reset()
    reports = generate(pipeline, files=3, rows=200, seed=5, invalid_ratio=0.05, duplicate_ratio=0.05, late_ratio=0.05)
    (pipeline.landing_dir / "mystery.csv").write_text("who,what\n1,2\n")

    done = pipeline.once()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    duplicates = sum(r.duplicates for r in reports)
    late = sum(r.late for r in reports)
    metrics = pipeline.query(
        "SELECT sum(total_records), sum(valid_records), sum(invalid_records), sum(duplicate_records), "
        "sum(late_records), sum(quarantined_files) FROM data_quality_metrics"
    )[0]
    total, valid, invalid, duplicate_count, late_count, quarantined = metrics
    assert total == 600 and total == valid + invalid + duplicate_count
    assert duplicate_count == duplicates
    assert late_count == late
    assert quarantined == 1
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == valid
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events WHERE is_late_arrival") == late
    # rows the job cannot type or store are in the DLQ with their raw line and a reason
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events") == invalid > 0
    assert pipeline.scalar(
        "SELECT count(*) FROM dead_letter_events WHERE validation_errors = '' OR raw_data = '' OR source_line IS NULL"
    ) == 0
    [(reason, quarantine_path)] = pipeline.query("SELECT reason, quarantine_path FROM quarantined_files")
    assert "matches no schema version" in reason
    assert (pipeline.root / "quarantine").exists() and quarantine_path.endswith("mystery.csv")


def test_an_empty_minute_starts_no_spark(pipeline):
    pipeline.reset()
    done = pipeline.once()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    output = done.stdout + done.stderr
    assert "0 file(s) waiting" in output
    assert "spark-submit" not in output.replace("spark_submit", "")
