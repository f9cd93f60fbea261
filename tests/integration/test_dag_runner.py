"""The session's long-lived Airflow CLI process (tests/fixtures/dag_runner.py) that runs the tests' DAG runs:
a test's extra environment reaches its own command only, every command's output and exit code come back as a
subprocess's would, and a command that kills the process is answered by its exit code and a new process."""

from __future__ import annotations

import os
import signal
import threading

import pytest

pytestmark = pytest.mark.integration


def test_each_command_sees_its_own_environment_and_returns_its_own_output(pipeline):
    runner = pipeline.runner
    pipeline.airflow_ready()

    def parallelism(**env: str) -> str:
        done = runner.run(["config", "get-value", "core", "parallelism"], env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    default = parallelism()
    assert parallelism(AIRFLOW__CORE__PARALLELISM="7") == "7"
    assert parallelism() == default != "7"  # the override ended with its command

    missing = runner.run(["dags", "test", "no_such_dag"], {}, timeout=120)
    assert missing.returncode != 0 and "no_such_dag" in missing.stdout + missing.stderr


def test_a_command_that_kills_the_runner_returns_its_exit_code_and_the_next_gets_a_new_runner(pipeline):
    runner = pipeline.runner
    pipeline.airflow_ready()
    first = runner.run(["config", "get-value", "core", "parallelism"], {}, timeout=120)
    assert first.returncode == 0
    pid = runner._process.pid

    # the process dies in the middle of a DAG run (the OOM killer, a fault test's SIGKILL): killed from outside
    threading.Timer(3, os.kill, (pid, signal.SIGKILL)).start()
    killed = runner.run(["dags", "test", "ecommerce_events"], {"LANDING_DIR": str(pipeline.root / "none")},
                        timeout=120)
    assert killed.returncode == -signal.SIGKILL

    after = runner.run(["config", "get-value", "core", "parallelism"], {}, timeout=120)
    assert after.returncode == 0 and runner._process.pid != pid
