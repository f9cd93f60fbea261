"""The session's long-lived Airflow CLI process (tests/fixtures/dag_runner.py) that runs the tests' DAG runs:
a test's extra environment reaches its own command only, every command's output and exit code come back as a
subprocess's would, and a command that kills the process is answered by its exit code and a new process."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import psutil
import pytest

from scripts.generator import EventGenerator
from tests.fixtures.processes import live_members

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


def test_a_runner_killed_mid_run_answers_with_its_exit_code_leaves_no_process_and_is_started_again(pipeline):
    """The runner dies in the middle of a DAG run (the OOM killer, a stray SIGKILL) while its spark-submit runs:
    the command's answer is the kill, the spark-submit and JVM it started go with it (they would hold the
    checkpoint's lock), and the next command gets a new runner."""
    runner = pipeline.runner
    pipeline.airflow_ready()
    pipeline.reset()
    generator = EventGenerator(5)
    generator.write_batch(generator.generate_batch(50, "v3"), "v3", pipeline.landing_dir)
    assert runner.run(["config", "get-value", "core", "parallelism"], {}, timeout=120).returncode == 0
    pid = runner._process.pid

    def kill_once_spark_runs() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                if any("SparkSubmit" in " ".join(child.cmdline())
                       for child in psutil.Process(pid).children(recursive=True)):
                    os.kill(pid, signal.SIGKILL)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_once_spark_runs)
    killer.start()
    killed = runner.run(["dags", "test", "ecommerce_events"], {}, timeout=300)
    killer.join()
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]

    assert live_members(pid) == []  # the runner, spark-submit and its JVM: all of them have exited
    after = runner.run(["config", "get-value", "core", "parallelism"], {}, timeout=120)
    assert after.returncode == 0 and runner._process.pid != pid
