"""scripts/pipeline.py's Supervisor with real child processes: `make run` stops at the first death, `make cluster`
starts a dead process again (as Compose's ``restart: unless-stopped``) until it crash-loops."""

from __future__ import annotations

import sys

import pytest

import scripts.pipeline
from scripts.pipeline import RESTART_LIMIT, Supervisor, _wait_for_http

pytestmark = pytest.mark.unit

QUICK_EXIT = [sys.executable, "-c", "raise SystemExit(3)"]
LONG = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture(autouse=True)
def log_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(scripts.pipeline, "LOG_DIR", tmp_path)
    return tmp_path


def exited(supervisor: Supervisor, name: str) -> None:
    process = supervisor.processes[name]
    process.wait(timeout=30)


def test_without_restart_a_death_is_reported_and_nothing_is_started_again():
    supervisor = Supervisor({}, restart=False)
    try:
        supervisor.start("scheduler", QUICK_EXIT)
        supervisor.start("api-server", LONG)
        exited(supervisor, "scheduler")
        first = supervisor.processes["scheduler"]
        assert supervisor.dead() == ["scheduler"]
        assert supervisor.processes["scheduler"] is first
    finally:
        supervisor.stop(grace_seconds=5)


def test_with_restart_a_killed_process_is_started_again_with_its_command(capsys, log_dir):
    supervisor = Supervisor({}, restart=True)
    try:
        supervisor.start("redis", LONG)
        first = supervisor.processes["redis"]
        first.kill()
        first.wait(timeout=30)
        assert supervisor.dead() == []
        second = supervisor.processes["redis"]
        assert second.pid != first.pid and second.poll() is None
        assert second.args == LONG
        assert "redis exited (code -9); starting it again" in capsys.readouterr().out
    finally:
        supervisor.stop(grace_seconds=5)
    assert second.poll() is not None  # stop() reaches the replacement too


def test_a_crash_loop_stops_being_restarted_and_counts_as_dead(capsys):
    supervisor = Supervisor({}, restart=True)
    try:
        supervisor.start("scheduler", QUICK_EXIT)
        for _ in range(RESTART_LIMIT):
            exited(supervisor, "scheduler")
            assert supervisor.dead() == []
        exited(supervisor, "scheduler")
        assert supervisor.dead() == ["scheduler"]
        output = capsys.readouterr().out
        assert output.count("scheduler exited (code 3); starting it again") == RESTART_LIMIT
        assert f"scheduler exited (code 3) {RESTART_LIMIT + 1} times within" in output
    finally:
        supervisor.stop(grace_seconds=5)


def test_waiting_for_the_api_server_stops_at_once_naming_the_log_when_it_dies(log_dir):
    """`make run` waits for the api-server to answer before it starts the rest; an api-server that dies (a port
    in use, a broken config) ends the wait at once with the log to read, not after the 180 s timeout."""
    supervisor = Supervisor({}, restart=False)
    try:
        supervisor.start("api-server", QUICK_EXIT)
        exited(supervisor, "api-server")
        with pytest.raises(SystemExit, match=f"api-server exited while waiting for http://127.0.0.1:9/ready; "
                                             f"see {log_dir}/api-server.log"):
            _wait_for_http("http://127.0.0.1:9/ready", 180, supervisor)
    finally:
        supervisor.stop(grace_seconds=5)


def test_waiting_for_an_address_that_answers_returns():
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    supervisor = Supervisor({}, restart=False)
    try:
        supervisor.start("api-server", LONG)
        _wait_for_http(f"http://127.0.0.1:{server.server_port}/", 30, supervisor)
    finally:
        supervisor.stop(grace_seconds=5)
        server.shutdown()
