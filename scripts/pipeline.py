"""Operator commands behind the Makefile.

    python -m scripts.pipeline init   # database(s), schema and Airflow metadata, nothing else
    python -m scripts.pipeline init --start-dags
                                      # init, the UI login, and the scheduled DAGs parsed and unpaused,
                                      # as `run` does (docker-compose.yaml's airflow-init)
    python -m scripts.pipeline migrate
                                      # the connections, roles and pending schema revisions, nothing else
    python -m scripts.pipeline once   # init, then one run of the DAG (`airflow dags test`); exit 0 / 1
    python -m scripts.pipeline run    # init, then Airflow + the generator until Ctrl+C
    python -m scripts.pipeline cluster
                                      # as run, multi-node: Redis, CeleryExecutor with two workers, a Spark
                                      # standalone master and two workers (scripts/cluster.py)
    python -m scripts.pipeline run|cluster --no-generator
                                      # without the generator: LANDING_DIR is fed by a real producer

`make run` / `make once` add ``--env-file .env``: the checkout's .env (when present) fills in what the
environment does not set (scripts/env_file.py). The tests run these commands without it, so a developer's
.env never changes what they test.

Airflow's connections say where the analytics database is (``ecommerce_postgres``, the writer; the schema is
applied through ``ecommerce_postgres_owner``): start-up creates the ones Airflow lacks from POSTGRES_* and
SPARK_MASTER (scripts/connections.py), never overrides one, and says which it uses. POSTGRES_HOST:POSTGRES_PORT is
the project's own server, administered as POSTGRES_USER: when it is local (localhost / 127.0.0.1) the cluster in
data/postgres is initialised and started as needed (`run` stops it again on exit if it started it), and there
start-up makes the roles (scripts/database_roles.py). A connection that points at another server is used as it
is: no local cluster is started for it and its roles are its DBA's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg

from include.airflow.packaging import build_class_archive, class_archive_path
from include.airflow.settings_resolution import with_connection_fields
from include.names import DAG_ID, HOURLY_REVENUE_DAG_ID, HOUSEKEEPING_DAG_ID, METADATA_ROLE, RETENTION_DAG_ID
from include.settings import PROJECT_ROOT, Settings
from include.storage.migrations import SchemaError
from include.storage.migrations.runner import upgrade_schema
from include.storage.privileges import grant_privileges
from scripts.airflow_env import (
    ADMIN_USER,
    METADATA_DATABASE,
    admin_password,
    airflow_environment,
    connection_definitions,
    project_metadata_url,
    role_passwords,
)
from scripts.cluster import Cluster, ClusterError
from scripts.connections import (
    CREATED,
    ENVIRONMENT,
    LOCAL_HOSTS,
    MISSING,
    same_server,
)
from scripts.database_roles import Login, RoleError, provision_analytics, provision_metadata
from scripts.env_file import EnvFileError, load_env_file
from scripts.local_postgres import LocalPostgres


def _log_dir() -> Path:
    """Where the Supervisor writes each process's log: resolved as Settings resolves PIPELINE_LOG_DIR, so the
    housekeeping DAG rotates the files written here; from the environment as it is now."""
    return Settings.from_env({"PIPELINE_LOG_DIR": os.environ.get("PIPELINE_LOG_DIR", "")}).pipeline_log_dir


LOG_DIR = _log_dir()  # resolved again by load_env once the --env-file is read


# `make cluster`'s restart policy (Supervisor): a process that dies this often within the window is broken
RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 300.0


def say(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


@dataclass
class Environment:
    settings: Settings  # the pipeline's: its database is the connection ecommerce_postgres's
    env: dict[str, str]
    started_postgres: LocalPostgres | None = None

    @classmethod
    def prepare(cls, spark: bool = True) -> Environment:
        """Make the metadata database, the connections, the roles, the schema and (``spark``) the Spark archive
        ready."""
        configured = Settings.from_env()  # POSTGRES_*: the project's own server, and how to administer it
        env = {**os.environ, **airflow_environment(configured)}
        passwords = role_passwords(env)
        server = ProjectServer(configured)
        if env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == project_metadata_url(configured, env):  # ours, not the user's
            server.start()
            _provision(lambda: provision_metadata(server.admin_conninfo, METADATA_DATABASE,
                                                  Login(METADATA_ROLE, passwords["metadata"])))
        started_at = time.monotonic()
        if _metadata_migrated(env):
            say("Airflow metadata database up to date")
        else:
            _airflow(env, "db", "migrate", quiet=True)
            _record_migration(env)
            say(f"Airflow metadata database ready ({time.monotonic() - started_at:.0f} s)")
        connections = _resolve_connections(env, connection_definitions(configured, passwords, env))
        writer, owner, reader = connections["writer"], connections["owner"], connections["reader"]
        if owner["source"] == MISSING:
            raise SystemExit(
                f"[pipeline] {writer['conn_id']} points at {_where(writer)}, and Airflow has no connection "
                f"{owner['conn_id']}: define it (the role that owns the schema there; {owner['variable']} or "
                "Admin -> Connections), docs/security.md says which roles to create")
        if same_server(writer, {"host": configured.postgres_host, "port": configured.postgres_port}):
            server.start()
            logins = [Login(c["login"], c["password"]) for c in (owner, writer, reader)]
            _provision(lambda: provision_analytics(server.admin_conninfo, writer["schema"], *logins))
        else:
            say(f"{writer['conn_id']} points at {_where(writer)}, not this project's server: no local analytics "
                "cluster for it, its roles are its administrator's")
        migrate_schema(_with_connection(configured, owner).postgres_conninfo, writer["login"], reader.get("login"))
        settings = _with_connection(configured, writer)
        if spark and (not (archive := class_archive_path()) or not archive.exists()):
            started_at = time.monotonic()
            say("writing Spark's class-data archive (once per Java and Spark version, about a minute) ...")
            if build_class_archive():
                say(f"Spark class-data archive ready ({time.monotonic() - started_at:.0f} s)")
            else:
                say("no class-data archive yet (another process is writing it, or it cannot be built here): "
                    "Spark starts without it, about 10 s slower per run")
        return cls(settings, env, server.started)


@dataclass
class ProjectServer:
    """POSTGRES_HOST:POSTGRES_PORT, administered as POSTGRES_USER; started here when it is local and down."""

    settings: Settings
    started: LocalPostgres | None = None
    ready: bool = False

    @property
    def admin_conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(self.settings.postgres_conninfo, dbname="postgres")

    def start(self) -> None:
        if self.ready or self.settings.postgres_host not in LOCAL_HOSTS:
            return
        cluster = LocalPostgres.from_settings(self.settings)
        was_running = cluster.initialised() and cluster.running()
        cluster.ensure()
        if not was_running:
            self.started = cluster
            say(f"started PostgreSQL on {cluster.host}:{cluster.port} (data in {cluster.data_dir})")
        self.ready = True


def migrate_schema(owner_conninfo: str, writer: str, reader: str | None) -> None:
    """As the schema's owner (connection ecommerce_postgres_owner: the only role with DDL): apply the pending
    revisions of the analytics schema (include/storage/migrations, docs/schema.md), or stop with the reason, then
    grant the writer and the reader their privileges (include/storage/privileges.py)."""
    try:
        upgrade = upgrade_schema(owner_conninfo)
    except SchemaError as error:
        raise SystemExit(f"[pipeline] {error}") from None
    say(upgrade.describe())
    with psycopg.connect(owner_conninfo, connect_timeout=10) as conn:
        grant_privileges(conn, writer, reader)


def _provision(work) -> None:
    try:
        work()
    except RoleError as error:
        raise SystemExit(f"[pipeline] {error}") from None


def _where(connection: dict) -> str:
    return f"{connection['host']}:{connection['port'] or 5432}/{connection['schema']}"


def _with_connection(settings: Settings, connection: dict) -> Settings:
    return with_connection_fields(settings, host=connection["host"], port=connection["port"],
                                  schema=connection["schema"], login=connection["login"],
                                  password=connection["password"], extra=connection["extra"])


_SOURCES = {ENVIRONMENT: "from the environment ({variable})", "metastore": "from Airflow's metastore (as edited in "
            "Admin -> Connections)", CREATED: "created in Airflow's metastore from POSTGRES_* / SPARK_MASTER "
            "(edit it in Admin -> Connections; start-up never overrides it)", MISSING: "not defined"}


def _resolve_connections(env: dict[str, str], definitions: dict[str, dict]) -> dict[str, dict]:
    """The connections as Airflow has them (scripts/connections.py, in a process configured like Airflow's),
    each announced with where it comes from."""
    import json

    done = subprocess.run([sys.executable, "-m", "scripts.connections"], input=json.dumps(definitions), env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"[pipeline] reading Airflow's connections failed:\n{done.stderr[-3000:]}")
    connections = json.loads(done.stdout.strip().splitlines()[-1])
    for kind in ("writer", "owner", "reader", "spark"):
        c = connections[kind]
        where = "" if c["source"] == MISSING else (
            f" {c['host']}" if kind == "spark" else f" {c['login']}@{_where(c)}")
        say(f"connection {c['conn_id']}{where}: {_SOURCES[c['source']].format(variable=c['variable'])}")
    return connections


# `airflow db migrate` takes seconds even when there is nothing to migrate (docs/performance.md, "Figures behind
# choices in the code"), and every `make once` would pay it.
# After a migration, the Airflow version and the database's Alembic revision are recorded in AIRFLOW_HOME;
# the next start skips the command while both still match (another Airflow version, another or a reset
# database: it runs). Reading the revision is one query; no Airflow import is needed for it.
_MIGRATED_STAMP = ".metadata-migrated.json"


def _metadata_revision(env: dict[str, str]) -> str | None:
    url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if not url.startswith(("postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://")):
        return None
    try:
        with psycopg.connect("postgresql://" + url.split("://", 1)[1], connect_timeout=5) as conn:
            return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    except (psycopg.Error, TypeError):
        return None


def _migration_key(env: dict[str, str]) -> dict[str, str | None]:
    import hashlib
    from importlib.metadata import version

    database = hashlib.sha256(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").encode()).hexdigest()
    return {"airflow": version("apache-airflow"), "database": database, "revision": _metadata_revision(env)}


def _metadata_migrated(env: dict[str, str]) -> bool:
    import json

    stamp = Path(env["AIRFLOW_HOME"]) / _MIGRATED_STAMP
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    current = _migration_key(env)
    return current["revision"] is not None and recorded == current


def _record_migration(env: dict[str, str]) -> None:
    import json

    stamp = Path(env["AIRFLOW_HOME"]) / _MIGRATED_STAMP
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(_migration_key(env)))


def _airflow(env: dict[str, str], *args: str, quiet: bool = False) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "airflow"), *args]
    done = subprocess.run(command, env=env, capture_output=quiet, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout or "")[-3000:] + (done.stderr or "")[-3000:] if quiet else ""
        raise SystemExit(f"`airflow {' '.join(args)}` failed with exit code {done.returncode}\n{output}")
    return done


def once() -> int:
    environment = Environment.prepare()
    say(f"running one DAG run of {DAG_ID} over {environment.settings.landing_dir}")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "test", DAG_ID], env=environment.env, check=False
    )
    say("run succeeded" if done.returncode == 0 else f"run FAILED (exit code {done.returncode})")
    return 0 if done.returncode == 0 else 1


@dataclass
class Supervisor:
    """Starts long-running processes, each in its own process group, and stops every one of them.

    With ``restart=True`` (`make cluster`) a process that dies is started again, as Compose's
    ``restart: unless-stopped`` and a node's service manager do, unless it died ``RESTART_LIMIT`` times within
    ``RESTART_WINDOW_SECONDS`` (a crash loop, which stops everything). With ``restart=False`` (`make run`, a
    developer's loop) any death stops everything, so a broken component is seen at once."""

    env: dict[str, str]
    restart: bool = False
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict[str, str] | None]] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        self.commands[name] = (command, env)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = open(LOG_DIR / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.processes[name] = subprocess.Popen(
            command, env=self.env if env is None else env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=PROJECT_ROOT,
        )

    def dead(self) -> list[str]:
        """The processes that exited and are not started again (under ``restart``, those are restarted first)."""
        now = time.monotonic()
        for name, process in list(self.processes.items()):
            if not self.restart or process.poll() is None:
                continue
            recent = [moment for moment in self.restarts.get(name, []) if now - moment < RESTART_WINDOW_SECONDS]
            if len(recent) >= RESTART_LIMIT:
                say(f"{name} exited (code {process.returncode}) {len(recent) + 1} times within "
                    f"{RESTART_WINDOW_SECONDS:.0f} s; not starting it again")
                continue
            self.restarts[name] = [*recent, now]
            say(f"{name} exited (code {process.returncode}); starting it again")
            self.start(name, *self.commands[name])
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop(self, grace_seconds: float = 20.0) -> None:
        """SIGTERM every process group and every descendant (spark-submit, java, task workers), then SIGKILL."""
        tree: list[psutil.Process] = []
        for process in self.processes.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(process.pid)
                tree += [parent, *parent.children(recursive=True)]
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=grace_seconds)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _wait_for(check, timeout: float, supervisor: Supervisor, what: str) -> None:
    """Poll ``check`` once a second; stop everything with a message naming the log if a supervised process dies or
    ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not check():
        if dead := supervisor.dead():
            raise SystemExit(f"{', '.join(dead)} exited while waiting for {what}; see {LOG_DIR}/{dead[0]}.log")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready within {timeout:.0f} s; see the logs in {LOG_DIR}")
        time.sleep(1)


def _wait_for_http(url: str, timeout: float, supervisor: Supervisor) -> None:
    _wait_for(lambda: _answers(url), timeout, supervisor, url)


# What `run` (and `cluster`) start besides the cluster's processes: the Airflow components (`airflow <name>`,
# the api-server first) and the generator.
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
FEED = "generator"


# New DAGs start paused: the every-minute DAG, the daily archive retention and housekeeping and the example
# downstream DAG run without anyone clicking (the replay DAG is manual only).
SCHEDULED_DAG_IDS = (DAG_ID, RETENTION_DAG_ID, HOUSEKEEPING_DAG_ID, HOURLY_REVENUE_DAG_ID)


def start_dags(env: dict[str, str]) -> str:
    """Write the UI login's password file, parse the DAGs into the metadata database and unpause the
    scheduled ones; return the password. `run` does it before starting Airflow, Compose's airflow-init
    (``init --start-dags``) before the other containers start."""
    password = admin_password(Path(env["AIRFLOW_HOME"]), env)
    _airflow(env, "dags", "reserialize", quiet=True)
    # one CLI call: each costs seconds
    _airflow(env, "dags", "unpause", "--treat-dag-id-as-regex", "--yes",
             "^(" + "|".join(re.escape(dag_id) for dag_id in SCHEDULED_DAG_IDS) + ")$", quiet=True)
    return password


def refuse_placeholders(env: dict[str, str]) -> None:
    """Stop before anything starts when the UI would be reachable beyond loopback with a placeholder secret or
    the default login (include/airflow/exposure.py)."""
    from include.airflow.exposure import ExposedWithPlaceholders
    from include.airflow.exposure import refuse_placeholders as refuse

    try:
        refuse(env)
    except ExposedWithPlaceholders as error:
        raise SystemExit(f"[pipeline] {error}") from None


def run(cluster: Cluster | None = None, generator: bool = True) -> int:
    refuse_placeholders({**os.environ, **airflow_environment(Settings.from_env())})
    environment = Environment.prepare()
    env, settings = environment.env, environment.settings
    if cluster is not None:
        env.update(cluster.airflow_env(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
    # the generator below is the feed: silence from it is an alert. Empty counts as unset, as for every setting
    # (a shell that sourced .env.example exports FEED_EXPECTED as an empty string)
    if generator and not env.get("FEED_EXPECTED", "").strip():
        env["FEED_EXPECTED"] = "true"
    password = start_dags(env)
    airflow = str(Path(sys.executable).parent / "airflow")
    supervisor = Supervisor(env, restart=cluster is not None)
    stopping = False

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    try:
        if cluster is not None:
            for process in cluster.infrastructure(env):
                supervisor.start(process.name, process.command, process.env)
            _wait_for(cluster.ready, 120, supervisor, "Redis and the Spark workers")
            say(f"Redis on 127.0.0.1:{cluster.redis_port}, Spark master {cluster.spark_url} with "
                f"{cluster.spark_workers} workers (UI http://127.0.0.1:{cluster.spark_master_ui_port})")
        supervisor.start(
            AIRFLOW_COMPONENTS[0], [airflow, "api-server", "--host", env["AIRFLOW__API__HOST"], "--port", env["AIRFLOW__API__PORT"]]
        )
        # Every task reports to the api-server (the Execution API): nothing that runs a task starts before it
        # answers. Asked where it listens: the base URL may be a proxy's public address this machine cannot reach.
        host = env["AIRFLOW__API__HOST"].replace("0.0.0.0", "127.0.0.1")
        _wait_for_http(f"http://{host}:{env['AIRFLOW__API__PORT']}/api/v2/monitor/health", 180, supervisor)
        for component in AIRFLOW_COMPONENTS[1:]:
            supervisor.start(component, [airflow, component])
        for process in cluster.workers(env) if cluster is not None else ():
            supervisor.start(process.name, process.command, process.env)
        if generator:
            supervisor.start(FEED, [
                sys.executable, "-m", "scripts.generator",
                "--output-dir", str(settings.landing_dir),
                "--rate-seconds", os.environ.get("GENERATOR_RATE_SECONDS", "5"),
                "--batch-size", os.environ.get("GENERATOR_BATCH_SIZE", "100"),
                "--invalid-ratio", os.environ.get("GENERATOR_INVALID_RATIO", "0.02"),
                "--duplicate-ratio", os.environ.get("GENERATOR_DUPLICATE_RATIO", "0.01"),
                "--late-ratio", os.environ.get("GENERATOR_LATE_RATIO", "0.01"),
                "--structural-ratio", os.environ.get("GENERATOR_STRUCTURAL_RATIO", "0.005"),
                "--awkward-ratio", os.environ.get("GENERATOR_AWKWARD_RATIO", "0.02"),
                "--bom-crlf-ratio", os.environ.get("GENERATOR_BOM_CRLF_RATIO", "0.1"),
                "--bad-file-ratio", os.environ.get("GENERATOR_BAD_FILE_RATIO", "0.01"),
            ])
        ui = env["AIRFLOW__API__BASE_URL"]
        say(f"Airflow UI: {ui}  (login: {ADMIN_USER} / {password})")
        feed = "generator writing into" if generator else "no generator (FEED=off); files are read from"
        say(f"{feed} {settings.landing_dir}; DAG {DAG_ID} runs every minute")
        say(f"logs: {LOG_DIR}/<component>.log, task logs under {env['AIRFLOW_HOME']}/logs")
        say("press Ctrl+C to stop everything")
        while not stopping:
            dead = supervisor.dead()
            if dead:
                say(f"{', '.join(dead)} exited unexpectedly; see {LOG_DIR}/{dead[0]}.log. Stopping.")
                exit_code = 1
                break
            time.sleep(1)
    finally:
        say("stopping every process ...")
        supervisor.stop()
        if environment.started_postgres is not None:
            environment.started_postgres.stop()
            say("stopped PostgreSQL")
        say("all processes stopped")
    return exit_code


def load_env(env_file: str) -> None:
    """Fill the environment from ``env_file`` (what it lacks) and resolve what depends on it (LOG_DIR)."""
    global LOG_DIR
    try:
        if loaded := load_env_file(env_file):
            say(f"{env_file}: {', '.join(sorted(loaded))}")
    except EnvFileError as error:
        raise SystemExit(f"[pipeline] {error}") from None
    LOG_DIR = _log_dir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["init", "migrate", "once", "run", "cluster"])
    parser.add_argument("--start-dags", action="store_true",
                        help="with init: also write the UI login and parse and unpause the scheduled DAGs")
    parser.add_argument("--no-generator", dest="generator", action="store_false",
                        help="with run or cluster: start no generator (LANDING_DIR is fed by a real producer)")
    parser.add_argument("--env-file", help="a .env file (relative: to the checkout) for what the environment lacks")
    args = parser.parse_args(argv)
    if args.env_file:
        load_env(args.env_file)
    if args.command == "migrate":  # the owner's connection is Airflow's: the metadata is made ready first
        Environment.prepare(spark=False)
        return 0
    if args.command == "init":
        if args.start_dags:  # the UI's login is written: Compose's airflow-init, before any container serves it
            refuse_placeholders({**os.environ, **airflow_environment(Settings.from_env())})
        environment = Environment.prepare()
        if args.start_dags:
            start_dags(environment.env)
            say(f"DAGs {', '.join(SCHEDULED_DAG_IDS)} unpaused; UI login: {ADMIN_USER}")
        return 0
    if args.command == "cluster":
        try:
            cluster = Cluster.from_env(os.environ)
        except ClusterError as error:
            raise SystemExit(f"[pipeline] {error}") from None
        return run(cluster, generator=args.generator)
    return once() if args.command == "once" else run(generator=args.generator)


if __name__ == "__main__":
    sys.exit(main())
