"""The circuit breaker's state machine, with the clock injected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.ops.circuit_breaker import CLOSED, HALF_OPEN, OPEN, BreakerState, CircuitBreaker

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BREAKER = CircuitBreaker(threshold=3, cooldown=timedelta(minutes=5))


def fail(state: BreakerState, times: int, at: datetime = T0) -> BreakerState:
    for _ in range(times):
        state = BREAKER.on_failure(state, at, "spark-submit exited 1")
    return state


def test_stays_closed_below_the_threshold_and_success_resets_the_count():
    state = fail(BreakerState(), 2)
    assert (state.state, state.consecutive_failures) == (CLOSED, 2)
    assert BREAKER.decide(state, T0).allowed
    assert BREAKER.on_success(state) == BreakerState()


def test_opens_at_the_threshold_and_skips_runs_during_the_cool_down():
    state = fail(BreakerState(), 3)
    assert (state.state, state.opened_at) == (OPEN, T0)
    decision = BREAKER.decide(state, T0 + timedelta(minutes=4, seconds=59))
    assert not decision.allowed
    assert "OPEN" in decision.message and "3 consecutive failed runs" in decision.message
    assert "spark-submit exited 1" in decision.message


def test_after_the_cool_down_one_trial_run_goes_half_open_and_success_closes_it():
    state = fail(BreakerState(), 3)
    decision = BREAKER.decide(state, T0 + timedelta(minutes=5))
    assert decision.allowed and decision.state.state == HALF_OPEN
    assert BREAKER.on_success(decision.state).state == CLOSED


def test_a_failed_trial_opens_it_again_for_a_new_cool_down():
    trial = BREAKER.decide(fail(BreakerState(), 3), T0 + timedelta(minutes=6)).state
    later = T0 + timedelta(minutes=6, seconds=30)
    reopened = BREAKER.on_failure(trial, later, "still broken")
    assert (reopened.state, reopened.opened_at) == (OPEN, later)
    assert not BREAKER.decide(reopened, later + timedelta(minutes=4)).allowed
    assert BREAKER.decide(reopened, later + timedelta(minutes=5)).allowed
