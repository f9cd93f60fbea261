"""Alert state: the dedupe / cool-down / recovery decisions (pure), and how many alerts one check sends
(tests/integration/test_bounded_alerts.py: the same against a real pipeline_alerts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.ops.alerts import delivery, state
from include.ops.alerts.conditions import QUALITY_BREACH, more_alert
from include.ops.alerts.message import ERROR, WARNING, Alert
from include.ops.alerts.state import decide_clear, decide_raise, raise_alerts
from include.settings import Settings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
COOLDOWN = timedelta(minutes=60)


def breach(fingerprint: str = "validity<95.0", level: str = WARNING) -> Alert:
    return Alert(level, QUALITY_BREACH, fingerprint, "data quality breach", run_id="scheduled__2026-03-01")


def test_a_new_condition_is_sent_and_its_repeat_within_the_cooldown_is_not():
    reason, state = decide_raise(None, breach(), NOW, COOLDOWN)
    assert reason == "new" and state.active and state.last_sent_at == NOW

    for minute in range(1, 4):  # the per-minute DAG hits the same breach again and again
        reason, state = decide_raise(state, breach(), NOW + timedelta(minutes=minute), COOLDOWN)
        assert reason is None
    assert state.suppressed == 3 and state.last_sent_at == NOW


def test_after_the_cooldown_a_still_active_condition_is_repeated_once():
    _, state = decide_raise(None, breach(), NOW, COOLDOWN)
    _, state = decide_raise(state, breach(), NOW + timedelta(minutes=30), COOLDOWN)
    reason, state = decide_raise(state, breach(), NOW + COOLDOWN, COOLDOWN)
    assert reason and "1 repeat(s) suppressed" in reason
    assert state.suppressed == 0 and state.last_sent_at == NOW + COOLDOWN
    assert decide_raise(state, breach(), NOW + COOLDOWN + timedelta(minutes=1), COOLDOWN)[0] is None


@pytest.mark.parametrize("changed", [breach("validity<95.0;table_check:row_count"), breach(level=ERROR)])
def test_a_change_of_fingerprint_or_level_is_sent_at_once(changed):
    _, state = decide_raise(None, breach(), NOW, COOLDOWN)
    reason, state = decide_raise(state, changed, NOW + timedelta(minutes=1), COOLDOWN)
    assert reason == "changed" and state.fingerprint == changed.fingerprint and state.level == changed.level


def test_recovery_is_sent_once_and_the_next_breach_is_new_again():
    _, state = decide_raise(None, breach(), NOW, COOLDOWN)
    due, cleared = decide_clear(state, NOW + timedelta(minutes=2))
    assert due and not cleared.active
    assert decide_clear(cleared, NOW + timedelta(minutes=3)) == (False, cleared)  # no second recovery
    assert decide_clear(None, NOW) == (False, None)  # never alerted: nothing to recover from
    assert decide_raise(cleared, breach(), NOW + timedelta(minutes=4), COOLDOWN)[0] == "new"


def test_without_its_state_a_check_still_sends_at_most_alert_max_per_run_and_one_summary(tmp_path, monkeypatch):
    """PostgreSQL down (often the very failure): every alert is due, and the bound still holds."""
    def unreachable(settings, conn=None):
        raise OSError("connection refused")

    sent = []
    monkeypatch.setattr(state, "connection", unreachable)
    monkeypatch.setattr(delivery, "_post_to_slack", lambda alert: sent.append(alert) or "sent")
    settings = Settings.from_env({"ALERT_MAX_PER_RUN": "3", "ALERT_FILE": str(tmp_path / "alerts.jsonl")})
    found = [Alert(WARNING, f"foreign_file:/q/f{i}", "not a feed file", f"file f{i} quarantined") for i in range(12)]

    def summarise(others):
        return more_alert(others, "files quarantined", {"all of them": "SELECT 1;"}, "manual__1", "http://ui")

    assert raise_alerts(settings, found, summarise) == 4
    assert [a.title for a in sent] == ["file f0 quarantined", "file f1 quarantined", "file f2 quarantined",
                                       "9 more files quarantined in this run"]
    assert sent[-1].key == "foreign_file:more" and sent[-1].queries == {"all of them": "SELECT 1;"}
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 4
    sent.clear()
    assert raise_alerts(settings, found[:3], summarise) == 3 and len(sent) == 3  # within the bound: no summary
