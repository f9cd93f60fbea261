"""A project-local PostgreSQL cluster for `make run`, `make once` and the tests.

    python -m scripts.local_postgres ensure   # initdb if needed, start if down, create the databases
    python -m scripts.local_postgres stop
    python -m scripts.local_postgres clean    # stop, and delete a cluster kept outside the checkout (make clean)

The cluster lives in PGDATA_DIR (default data/postgres, see default_data_dir), listens on
127.0.0.1:POSTGRES_PORT only (no unix socket), and its superuser is POSTGRES_USER with POSTGRES_PASSWORD, as
in the official postgres image that docker-compose uses. `initdb` refuses to run as root, so as root every
server command runs as the `postgres` system user, which then owns the data directory.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from include.settings import PROJECT_ROOT, Settings, get_settings

DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "postgres"
SERVER_USER = "postgres"  # who runs the server when we are root


class LocalPostgresError(RuntimeError):
    """The local cluster could not be initialised or started; the message says where to look."""


def postgres_bin_dir() -> Path:
    """PG_BIN_DIR, else the newest /usr/lib/postgresql/*/bin, else the directory of `pg_ctl` on PATH."""
    if os.environ.get("PG_BIN_DIR"):
        return Path(os.environ["PG_BIN_DIR"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if candidates:
        return Path(candidates[-1])
    found = shutil.which("pg_ctl")
    if not found:
        raise LocalPostgresError("PostgreSQL server binaries not found: install them or set PG_BIN_DIR")
    return Path(found).resolve().parent


def outside_data_dir() -> Path:
    """The data directory of this checkout when the server user cannot enter it: in that user's home."""
    digest = hashlib.sha256(str(PROJECT_ROOT).encode()).hexdigest()[:12]
    home = Path(pwd.getpwnam(SERVER_USER).pw_dir)  # /var/lib/postgresql on Debian
    return home / f"ecommerce-pipeline-{PROJECT_ROOT.name}-{digest}" / "postgres"


def default_data_dir() -> Path:
    """data/postgres, or outside_data_dir() when we are root and the server user cannot enter the checkout.

    Why: as root the server runs as `postgres`, which needs search permission on every directory above its
    data directory. A checkout under /root or a `mktemp -d` (mode 0700) denies it, and opening up the user's
    directories is not ours to do. So such a checkout keeps its cluster and log in the postgres user's home,
    one directory per checkout path, with data/postgres a symlink to it (made by init, removed by `clean`).
    """
    if os.geteuid() != 0:
        return DEFAULT_DATA_DIR
    nearest = next(path for path in DEFAULT_DATA_DIR.parents if path.exists())  # data/, or the checkout
    probe = subprocess.run(["runuser", "-u", SERVER_USER, "--", "test", "-x", str(nearest)], cwd="/", check=False,
                           capture_output=True)
    return DEFAULT_DATA_DIR if probe.returncode == 0 else outside_data_dir()


@dataclass
class LocalPostgres:
    data_dir: Path
    port: int
    user: str
    password: str
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()  # server commands run in / (see _as_server_user)

    @classmethod
    def from_settings(cls, settings: Settings, data_dir: Path | None = None) -> LocalPostgres:
        data_dir = data_dir or Path(os.environ.get("PGDATA_DIR") or default_data_dir())
        return cls(data_dir, settings.postgres_port, settings.postgres_user, settings.postgres_password)

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _as_server_user(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        command = [str(postgres_bin_dir() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            # in /, not in a working directory the server user may not enter ("could not change directory")
            command, kwargs["cwd"] = ["runuser", "-u", SERVER_USER, "--", *command], "/"
        return subprocess.run(command, check=False, capture_output=True, text=True, **kwargs)

    def _chown_to_server_user(self, path: Path) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown_to_server_user(self.data_dir)
        self.data_dir.chmod(0o700)
        with tempfile.NamedTemporaryFile("w", delete=False, prefix="pwfile") as pwfile:
            pwfile.write(self.password + "\n")
        os.chmod(pwfile.name, 0o644)
        try:
            done = self._as_server_user(
                ["initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile.name}",
                 "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]
            )
        finally:
            os.unlink(pwfile.name)
        if done.returncode != 0:
            raise LocalPostgresError(f"initdb failed in {self.data_dir}:\n{done.stdout}{done.stderr}")
        if os.geteuid() == 0 and self.data_dir == outside_data_dir() and not os.path.lexists(DEFAULT_DATA_DIR):
            DEFAULT_DATA_DIR.parent.mkdir(parents=True, exist_ok=True)
            DEFAULT_DATA_DIR.symlink_to(self.data_dir, target_is_directory=True)  # for whoever looks in data/

    def running(self) -> bool:
        return self._as_server_user(["pg_ctl", "-D", str(self.data_dir), "status"]).returncode == 0

    def start(self) -> None:
        self.log_file.touch()
        self._chown_to_server_user(self.log_file)
        options = f"-p {self.port} -c listen_addresses={self.host} -c unix_socket_directories=''"
        done = self._as_server_user(
            ["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w", "-t", "60", "start"]
        )
        if done.returncode != 0:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise LocalPostgresError(
                f"PostgreSQL did not start on {self.host}:{self.port} (is the port taken?):\n{done.stdout}{tail}"
            )

    def stop(self, mode: str = "fast") -> None:
        if self.initialised() and self.running():
            self._as_server_user(["pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def conninfo(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )

    def ensure(self, databases: tuple[str, ...] = ()) -> None:
        """Initialise, start and create ``databases`` as needed; safe to call on a running cluster."""
        if not self.initialised():
            self.init()
        if not self.running():
            self.start()
        self.wait_ready()
        for name in databases:
            ensure_database(self.conninfo(), name)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=3):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


def ensure_database(admin_conninfo: str, name: str) -> bool:
    """Create database ``name`` if it does not exist; return whether it was created."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["ensure", "stop", "status", "clean"])
    parser.add_argument("--database", action="append", default=[], help="database to create (repeatable)")
    args = parser.parse_args(argv)
    cluster = LocalPostgres.from_settings(get_settings())
    if args.command == "ensure":
        cluster.ensure(tuple(args.database))
        print(f"PostgreSQL running on {cluster.host}:{cluster.port} (data: {cluster.data_dir})")
    elif args.command in ("stop", "clean"):
        cluster.stop()
        if args.command == "clean" and os.geteuid() == 0 and cluster.data_dir == outside_data_dir():
            shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)  # data/ (and its symlink): the Makefile
    else:
        running = cluster.initialised() and cluster.running()
        print("running" if running else "stopped")
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
