"""`make once` as root in a fresh checkout under a private directory (0700: /root, a `mktemp -d`).

The local PostgreSQL server runs as the `postgres` system user, which cannot enter such a checkout; the run
must still start its cluster, load the landed rows and leave nothing behind after `make clean`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from scripts.generator import EventGenerator
from tests.fixtures.pipeline import PROJECT_ROOT, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user (postgres); CI runs as root"),
]
ROWS = 20
# the clone decides these itself (defaults inside the clone); the test session's values must not leak in
OWN_SETTINGS = ("PGDATA_DIR", "LANDING_DIR", "ARCHIVE_DIR", "CHECKPOINT_DIR", "QUARANTINE_DIR",
                "GREAT_EXPECTATIONS_DIR", "ALERT_FILE")


def copy_checkout(destination: Path) -> None:
    """What `git clone` gives, but of the working tree as it is (tracked and new files, nothing ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT_ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (PROJECT_ROOT / name).is_file():  # not a tracked file deleted in the working tree, not the .venv link
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, destination / name)


def test_make_once_as_root_in_a_checkout_postgres_cannot_enter():
    private = Path(tempfile.mkdtemp(prefix="ecom-private-"))  # 0700, like /root
    assert subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(private)]).returncode != 0
    checkout = private / "fresh"
    copy_checkout(checkout)
    port, password = free_port(), f"pc-{secrets.token_hex(6)}"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW", "POSTGRES_", "PIPELINE_")) and key not in OWN_SETTINGS}
    env.update(POSTGRES_PORT=str(port), POSTGRES_PASSWORD=password,
               AIRFLOW_HOME=str(checkout / "data" / "airflow"), LANDING_DIR=str(checkout / "data" / "landing"))
    generator = EventGenerator(7)
    generator.write_batch(generator.generate_batch(ROWS, "v3"), "v3", checkout / "data" / "landing")

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=600)

    try:
        once = make("scripts.pipeline", "once")  # `make once`
        assert once.returncode == 0, once.stdout[-4000:] + once.stderr[-4000:]
        conninfo = psycopg.conninfo.make_conninfo(host="127.0.0.1", port=port, user="spark", password=password,
                                                  dbname="ecommerce")
        with psycopg.connect(conninfo) as conn:
            assert conn.execute("SELECT count(*) FROM ecommerce_events").fetchone()[0] == ROWS
        pointer = checkout / "data" / "postgres"
        assert pointer.is_symlink(), "data/postgres should point to where the cluster went"
        cluster_home = pointer.resolve().parent
        assert not cluster_home.is_relative_to(private)
    finally:
        clean = make("scripts.local_postgres", "clean")  # what `make clean` runs before `rm -rf data`
        shutil.rmtree(private, ignore_errors=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not cluster_home.exists(), f"make clean left {cluster_home}"
