"""Rule severities through the real DAG: warn (stored, violation recorded), drop (dead letter), fail (the run
stops before publishing; the batch waits staged), chosen per run by an Airflow Variable, and a bad Variable
that stops the run at its first task with the Variable's name."""

from __future__ import annotations

import json

import pytest

from scripts.generator import EventGenerator

pytestmark = pytest.mark.integration

SEVERITY = "AIRFLOW_VAR_ECOMMERCE_RULE_SEVERITY"  # how `airflow dags test` sees Variable ecommerce_rule_severity


def land_growing_business(pipeline, seed: int) -> tuple[set[str], set[str]]:
    """80 good v3 rows, 12 of them in a new category (garden) or a new segment (returning)."""
    generator = EventGenerator(seed, invalid_ratio=0.0, duplicate_ratio=0.0, late_ratio=0.0, structural_ratio=0.0)
    rows = generator.generate_batch(80, "v3")
    novel = set()
    for i, row in enumerate(rows[:12]):
        row["category" if i % 2 else "user_segment"] = "garden" if i % 2 else "returning"
        novel.add(row["event_id"])
    generator.write_batch(rows, "v3", pipeline.landing_dir)
    return {r["event_id"] for r in rows}, novel


def test_warn_stores_and_records_drop_dead_letters_fail_holds_the_batch_until_the_variable_changes(pipeline):
    pipeline.reset()
    ids, novel = land_growing_business(pipeline, seed=31)
    done = pipeline.once()
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]  # the gate passes: nothing is wrong
    assert {r[0] for r in pipeline.query("SELECT event_id FROM ecommerce_events")} == ids
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events") == 0
    violations = pipeline.query("SELECT event_id, rule, reason FROM rule_violations ORDER BY rule")
    assert {e for e, _, _ in violations} == novel and {r for _, r, _ in violations} == {"category_known", "user_segment_known"}
    assert any("garden" in reason for *_, reason in violations)
    warned, in_force = pipeline.query("SELECT sum(warned_records), min(rules_in_force::text) FROM data_quality_metrics")[0]
    assert warned == len(novel) and json.loads(in_force)["severity"]["category_known"] == "warn"
    assert pipeline.scalar("SELECT sum(warned_records) FROM v_data_quality_dashboard") == len(novel)
    assert "stored with warn-level violations" in done.stdout + done.stderr

    # fail: the run stops in publish; nothing of the batch is stored, it stays staged, an ERROR names the rule
    stored_before = pipeline.scalar("SELECT count(*) FROM ecommerce_events")
    ids2, novel2 = land_growing_business(pipeline, seed=32)
    failed = pipeline.once(**{SEVERITY: '{"category_known": "fail"}'})
    assert failed.returncode == 1
    assert "rule category_known (severity fail) is broken by 6 row(s)" in failed.stdout + failed.stderr
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == stored_before
    assert pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NULL") == 1
    errors = [json.loads(line) for line in pipeline.settings.alert_file.read_text().splitlines()]
    assert any(a["level"] == "ERROR" and "category_known (severity fail)" in " ".join(a["details"]) for a in errors)

    # the operator decides those rows are bad after all: drop both domain rules; the next run publishes the
    # held batch exactly once, the new category and segment dead-lettered as the old behaviour did
    done = pipeline.once(**{SEVERITY: '{"category_known": "drop", "user_segment_known": "drop"}'})
    assert done.returncode == 1  # 12 of 80 dead-lettered: validity 85% < 95%, the gate fails after publishing
    stored = [r[0] for r in pipeline.query("SELECT event_id FROM ecommerce_events")]
    dead = [r[0] for r in pipeline.query("SELECT event_id FROM dead_letter_events")]
    assert len(stored) == len(set(stored)) and set(stored) == ids | (ids2 - novel2)
    assert sorted(dead) == sorted(novel2)
    assert pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NULL") == 0


# every kind of bad value and its message: tests/include/test_live_settings.py; here, what a run does with one
@pytest.mark.parametrize(("variable", "value", "message"), [
    (SEVERITY, '{"category_kown": "warn"}', "no rule is named 'category_kown'"),
])
def test_a_bad_variable_fails_the_first_task_naming_it(pipeline, variable, value, message):
    pipeline.reset()
    land_growing_business(pipeline, seed=33)
    done = pipeline.once(**{variable: value})
    output = done.stdout + done.stderr
    assert done.returncode == 1
    name = variable.removeprefix("AIRFLOW_VAR_").lower()
    assert f"Airflow Variable {name}={value!r}" in output and message in output, output[-3000:]
    assert "[DAG TEST] starting task_id=detect_work" in output
    assert "[DAG TEST] starting task_id=package_code" not in output  # it stopped at the first task
    assert pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger") == 0  # no Spark job ran
