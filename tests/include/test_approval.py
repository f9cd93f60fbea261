"""What the replay's approval form shows, and that only an approval lets the replay run."""

from __future__ import annotations

import pytest

from include.airflow.approval import approval_body, approval_subject, approver

pytestmark = pytest.mark.unit

COUNTS = {"filters": {"rule": "price_in_range", "failed_from": None, "failed_to": None, "file": "a.csv"},
          "published": 7, "still_failing": 3, "resolved_already_stored": 1, "parse_kind_skipped": 2,
          "not_replayable": 1, "failing_rows_per_rule": {"price_in_range": 3}}


def test_the_form_shows_the_selection_and_what_the_replay_would_do():
    body = approval_body(COUNTS)
    assert "`rule` = `price_in_range`, `file` = `a.csv`" in body  # the filters set, not the empty ones
    assert "| pass now: stored in `ecommerce_events` | **7** |" in body
    assert "| still fail: stay open, attempt count + 1 | 3 |" in body
    assert "| event already stored: resolved | 1 |" in body
    assert "(use a backfill) | 3 |" in body
    assert "| `price_in_range` | 3 |" in body
    assert approval_subject(COUNTS).startswith("Replay dead letters: 7 would be stored, 3 would still fail")
    assert "every open dead letter" in approval_body({**COUNTS, "filters": {}, "failing_rows_per_rule": {}})


def test_only_an_approval_names_an_approver():
    approved = {"chosen_options": ["Approve"], "params_input": {},
                "responded_by_user": {"id": "7", "name": "alice"}}
    assert approver(approved) == "alice"
    for answer in ({**approved, "chosen_options": ["Reject"]}, None, {}):
        with pytest.raises(ValueError, match="not approved"):
            approver(answer)
