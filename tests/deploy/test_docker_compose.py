"""docker-compose.yaml cannot be run on the development machines (no Docker engine), so these tests validate it
against the Compose specification's JSON schema and keep it consistent with the local setup: same services,
same code mounts, same settings, the same DAG and connection ids, versions that match the pinned packages,
users and volume owners, the login, health checks and ordering, and no secret in the file."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path, PurePosixPath

import jsonschema
import pyspark
import pytest
import yaml

from include.airflow.packaging import CODE_ARCHIVE_DIR
from include.settings import PROJECT_ROOT as SETTINGS_ROOT
from include.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "generator")
SPARK_SERVICES = ("spark-master", "spark-worker")
SETTING_NAMES = {f.name.upper() for f in fields(Settings)}
DATA_VOLUME = "pipeline-data"
# compose-spec/compose-spec's schema/compose-spec.json (Apache-2.0, LICENSE beside it), commit 170098b of 2026-06-23
COMPOSE_SCHEMA = json.loads((Path(__file__).parent / "compose_spec" / "compose-spec.json").read_text())
PROJECT_USER = "${AIRFLOW_UID:-50000}:0"


def env_of(service: str) -> dict[str, str]:
    return SERVICES[service]["environment"]


def interpolate(value: str, values: dict[str, str] | None = None) -> str:
    """What compose makes of ``${NAME:-default}`` / ``${NAME:?error}``, nested too (set variables from ``values``)."""
    values = values or {}

    def replace(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in values:
            return values[name]
        assert op == ":-", f"${{{name}}} has no default and is not set"
        return arg

    innermost = re.compile(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(:[-?])?([^}$]*)\}")
    while (replaced := innermost.sub(replace, value)) != value:
        value = replaced
    return value


def mounts(service: str) -> dict[str, str]:
    """Container path -> source (named volume or ./host path) of a service's mounts."""
    pairs = (re.match(r"^(\$\{[^}]*\}|[^:]+):([^:]+)", entry).groups() for entry in SERVICES[service].get("volumes", []))
    return {target: source for source, target in pairs}


def pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, f"{package} is not pinned in requirements.txt"
    return match.group(1)


def test_every_component_is_a_service():
    assert SERVICES["postgres"]["image"] == "postgres:15"
    assert SERVICES["redis"]["image"].startswith("redis:")
    for name in AIRFLOW_SERVICES + SPARK_SERVICES:
        assert name in SERVICES
    commands = {name: SERVICES[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert commands["airflow-worker"] == "celery worker"
    assert commands["airflow-init"][-4:] == ["-m", "scripts.pipeline", "init", "--start-dags"]
    assert commands["generator"][:3] == ["python", "-m", "scripts.generator"]
    assert DOCKERFILE.startswith("#")


def test_images_match_the_pinned_airflow_pyspark_and_python():
    airflow, python = pinned("apache-airflow"), f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.search(rf"^FROM apache/airflow:{re.escape(airflow)}-python{python}$", DOCKERFILE, re.M), (airflow, python)
    assert airflow.startswith("3.3.")
    # The Spark services run the project image: the Spark of the pinned pyspark, with the submitter's Python
    # and the job's dependencies, which the executors need.
    assert pinned("pyspark") == pyspark.__version__
    assert pyspark.__version__.startswith("4.2")
    project = (SERVICES["airflow-worker"]["build"], SERVICES["airflow-worker"]["image"])
    for name in AIRFLOW_SERVICES + SPARK_SERVICES:
        assert (SERVICES[name]["build"], SERVICES[name]["image"]) == project, name
    assert SERVICES["spark-master"]["command"][:2] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    assert SERVICES["spark-worker"]["command"][:2] == ["spark-class", "org.apache.spark.deploy.worker.Worker"]
    assert (Path(pyspark.__file__).parent / "bin" / "spark-class").exists()


def test_airflow_services_mount_the_project_code_and_share_the_data_volume():
    for name in AIRFLOW_SERVICES:
        volumes = mounts(name)
        for folder in ("dags", "plugins", "include", "spark_jobs", "scripts"):
            assert volumes[f"/opt/airflow/{folder}"] == f"./{folder}", (name, folder)
            assert (ROOT / folder).is_dir()
        assert volumes["/opt/airflow/data"] == DATA_VOLUME
        assert volumes["/opt/airflow/logs"] == "airflow-logs"  # the api-server reads the workers' task logs
    assert set(COMPOSE["volumes"]) >= {DATA_VOLUME, "airflow-logs", "postgres-data"}


def test_every_directory_setting_is_on_the_volume_shared_by_the_submitter_and_the_spark_workers():
    env = env_of("airflow-worker")
    settings = Settings.from_env({k: interpolate(v, {"POSTGRES_PASSWORD": "x"}) for k, v in env.items() if k in SETTING_NAMES})
    submitter, executor = mounts("airflow-worker"), mounts("spark-worker")
    data_mount = next(path for path, source in submitter.items() if source == DATA_VOLUME)
    assert executor[data_mount] == DATA_VOLUME  # executors read landed files by the driver's path
    code_dir = PurePosixPath(env["PIPELINE_HOME"]) / CODE_ARCHIVE_DIR.relative_to(SETTINGS_ROOT).as_posix()
    for directory in (settings.landing_dir, settings.archive_dir, settings.checkpoint_dir, settings.quarantine_dir,
                      settings.great_expectations_dir, code_dir):
        assert PurePosixPath(directory).is_relative_to(data_mount), directory
    generator = SERVICES["generator"]["command"]
    assert generator[generator.index("--output-dir") + 1] == str(settings.landing_dir)
    assert env["PIPELINE_HOME"] == "/opt/airflow" and env["PYTHONPATH"] == "/opt/airflow"
    # Spark's class-data archive is written once on the shared volume, not once per container
    assert PurePosixPath(env["XDG_CACHE_HOME"]).is_relative_to(data_mount)


def test_every_setting_the_file_passes_exists_and_the_airflow_services_agree():
    extras = {"PIPELINE_HOME", "PYTHONPATH", "PYSPARK_PYTHON", "DUMB_INIT_SETSID", "XDG_CACHE_HOME", "PIPELINE_DEPLOYMENT"}
    reference = env_of("airflow-scheduler")
    for name in AIRFLOW_SERVICES:
        env = env_of(name)
        unknown = {key for key in env if not key.startswith("AIRFLOW")} - SETTING_NAMES - extras
        assert not unknown, (name, unknown)
        own = {"airflow-worker": {"DUMB_INIT_SETSID"}, "airflow-init": {"AIRFLOW_ADMIN_PASSWORD"}}.get(name, set())
        assert {k: v for k, v in env.items() if k not in own} == reference, name
    for name in ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert name in reference
    assert reference["POSTGRES_HOST"] == "postgres" and reference["POSTGRES_PORT"] == "5432"
    # the analytics database and its credentials are the ones the postgres service is created with
    for name in ("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert reference[name] == env_of("postgres")[name], name


def test_the_dag_connections_point_at_the_compose_services():
    env = env_of("airflow-worker")
    from include.names import OWNER_CONN_ID, READER_CONN_ID
    from include.names import POSTGRES_CONN_ID as postgres_id
    from include.names import SPARK_CONN_ID as spark_id

    assert (spark_id, postgres_id) == ("spark_default", "ecommerce_postgres")
    spark = json.loads(env[f"AIRFLOW_CONN_{spark_id.upper()}"])
    master = SERVICES["spark-master"]["command"]
    url = f"spark://{master[master.index('--host') + 1]}:{master[master.index('--port') + 1]}"
    assert spark == {"conn_type": "spark", "host": url} == {"conn_type": "spark", "host": "spark://spark-master:7077"}
    assert url in SERVICES["spark-worker"]["command"]
    assert SERVICES["spark-master"]["hostname"] == "spark-master"
    secret = {"POSTGRES_PASSWORD": "p", "POSTGRES_USER": "u", "POSTGRES_DB": "d", "POSTGRES_WRITER_PASSWORD": "w",
              "POSTGRES_OWNER_PASSWORD": "o", "POSTGRES_READER_PASSWORD": "r"}
    # the pipeline writes as the writer role, never as the server's administrator (POSTGRES_USER)
    for conn_id, login, password in ((postgres_id, "ecommerce_writer", "w"), (OWNER_CONN_ID, "ecommerce_owner", "o"),
                                     (READER_CONN_ID, "ecommerce_reader", "r")):
        postgres = json.loads(interpolate(env[f"AIRFLOW_CONN_{conn_id.upper()}"], secret))
        assert postgres == {"conn_type": "postgres", "host": "postgres", "port": 5432, "schema": "d", "login": login,
                            "password": password}


def test_celery_executor_with_redis_broker_and_metadata_on_postgres():
    env = env_of("airflow-scheduler")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("@postgres:5432/airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    assert "CREATE DATABASE airflow" in (ROOT / "include" / "storage" / "sql" / "create_airflow_database.sql").read_text()
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")


def test_every_long_running_service_has_a_healthcheck_and_dependencies_wait_for_it():
    for name, service in SERVICES.items():
        if service.get("restart") == "no":
            continue  # airflow-init: a one-shot job
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, service in SERVICES.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in SERVICES, (name, dependency)
            wanted = ("service_completed_successfully" if SERVICES[dependency].get("restart") == "no"
                      else "service_healthy")
            assert spec["condition"] == wanted, (name, dependency)
    assert set(SERVICES["airflow-worker"]["depends_on"]) >= {"postgres", "redis", "airflow-init", "spark-master"}
    assert "spark-master" in SERVICES["spark-worker"]["depends_on"]
    # the health checks look at the ports the services really use
    master, worker = SERVICES["spark-master"], SERVICES["spark-worker"]
    assert f"localhost:{master['command'][master['command'].index('--webui-port') + 1]}/json/" in master["healthcheck"]["test"][1]
    assert f"localhost:{worker['command'][worker['command'].index('--webui-port') + 1]}/json/" in worker["healthcheck"]["test"][1]
    assert env_of("airflow-scheduler")["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"


def test_no_secret_is_written_in_the_file_and_every_variable_is_documented():
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_TEXT))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert referenced <= documented, referenced - documented
    # a secret comes from .env or compose refuses to start: never a default, never a literal
    for name, op in re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(:[-?])?", COMPOSE_TEXT):
        if re.search("PASSWORD|SECRET|TOKEN|_KEY$", name):
            assert op == ":?", f"${{{name}}} must be required (:?), not defaulted"
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("(PASSWORD|SECRET|_KEY)$", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), (name, key)
    assert "spark123" not in COMPOSE_TEXT and "change-me" not in COMPOSE_TEXT


def test_the_spark_cluster_gets_no_database_setting():
    """Executors receive the database settings with their tasks; the Spark containers hold none."""
    for name in SPARK_SERVICES:
        service = SERVICES[name]
        assert "env_file" not in service and "POSTGRES" not in json.dumps(service.get("environment", {})), name


def test_env_example_lists_every_setting():
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert documented >= SETTING_NAMES


def test_ports_bind_to_loopback_only():
    for service in SERVICES.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_the_housekeeping_task_cleans_the_metadata_database_the_components_use():
    """A task cannot read sql_alchemy_conn in Airflow 3; connection airflow_metadata must carry the same URL."""
    from include.names import METADATA_CONN_ID

    env = env_of("airflow-worker")
    secret = {"POSTGRES_PASSWORD": "p", "POSTGRES_USER": "u", "AIRFLOW_DB_PASSWORD": "m"}
    metadata = json.loads(interpolate(env[f"AIRFLOW_CONN_{METADATA_CONN_ID.upper()}"], secret))
    assert metadata["conn_type"] == "generic"
    assert metadata["extra"]["sql_alchemy_conn"] == interpolate(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], secret)
    # its own role, not the analytics database's administrator: the URL start-up makes the role for
    from scripts.airflow_env import project_metadata_url

    ours = project_metadata_url(Settings(postgres_host="postgres", postgres_port=5432), {"AIRFLOW_DB_PASSWORD": "m"})
    assert interpolate(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], secret) == ours


def test_the_file_is_valid_for_the_compose_specification():
    jsonschema.Draft7Validator.check_schema(COMPOSE_SCHEMA)
    jsonschema.validate(COMPOSE, COMPOSE_SCHEMA, cls=jsonschema.Draft7Validator)
    # the schema really looks: a typo'd key and a wrong type are refused
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["airflow-init"]["depends_on"]["init-volumes"]["condtion"] = "service_healthy"
    with pytest.raises(jsonschema.ValidationError, match="condtion"):
        jsonschema.validate(broken, COMPOSE_SCHEMA, cls=jsonschema.Draft7Validator)
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["airflow-worker"]["depends_on"] = "postgres"  # a list or a mapping
    with pytest.raises(jsonschema.ValidationError, match="is not valid under any of the given schemas"):
        jsonschema.validate(broken, COMPOSE_SCHEMA, cls=jsonschema.Draft7Validator)


def test_every_container_runs_as_airflow_uid_and_owns_the_volumes_it_writes():
    """A new named volume belongs to root; init-volumes, as root, gives each one an Airflow or Spark container
    mounts to AIRFLOW_UID before airflow-init (and everything after it) starts."""
    owner = SERVICES["init-volumes"]
    assert owner["user"] == "0:0" and owner["restart"] == "no" and owner["environment"]["AIRFLOW_UID"] == "${AIRFLOW_UID:-50000}"
    project = [name for name, service in SERVICES.items() if service.get("build") and name != "init-volumes"]
    assert set(project) == set(AIRFLOW_SERVICES + SPARK_SERVICES)
    for name in project:
        assert SERVICES[name]["user"] == PROJECT_USER, name
    written = {path for name in project for path, source in mounts(name).items()
               if not source.startswith(("./", "${"))}  # a bind mount (LANDING_HOST_DIR) is the host's
    assert written == {"/opt/airflow/data", "/opt/airflow/logs", "/opt/airflow/auth"}
    assert {path for path in mounts("init-volumes")} == written
    command = owner["command"][-1]
    assert command.startswith("find " + " ".join(sorted(written)) + " ")
    assert '-exec chown "$${AIRFLOW_UID}:0" {} +' in command
    assert SERVICES["airflow-init"]["depends_on"]["init-volumes"] == {"condition": "service_completed_successfully"}


def test_the_login_is_the_documented_one_and_the_scheduled_dags_start_unpaused():
    from scripts.pipeline import SCHEDULED_DAG_IDS

    init, api = env_of("airflow-init"), env_of("airflow-apiserver")
    assert api["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"  # user admin, role admin
    passwords = PurePosixPath(api["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    # written by airflow-init into a volume the api-server mounts too
    assert mounts("airflow-init")[str(passwords.parent)] == mounts("airflow-apiserver")[str(passwords.parent)] == "airflow-auth"
    assert init["AIRFLOW_ADMIN_PASSWORD"].startswith("${AIRFLOW_ADMIN_PASSWORD:?")
    assert "AIRFLOW_ADMIN_PASSWORD" not in api
    assert SERVICES["airflow-init"]["command"] == ["python", "-m", "scripts.pipeline", "init", "--start-dags"]
    assert "ecommerce_events" in SCHEDULED_DAG_IDS


def test_the_ui_port_and_the_alert_links_follow_airflow_api_port():
    [port] = SERVICES["airflow-apiserver"]["ports"]
    base_url = env_of("airflow-worker")["AIRFLOW__API__BASE_URL"]
    assert interpolate(port) == "127.0.0.1:8080:8080" and interpolate(base_url) == "http://127.0.0.1:8080"
    assert interpolate(port, {"AIRFLOW_API_PORT": "9090"}) == "127.0.0.1:9090:8080"
    assert interpolate(base_url, {"AIRFLOW_API_PORT": "9090"}) == "http://127.0.0.1:9090"
    assert interpolate(base_url, {"AIRFLOW__API__BASE_URL": "https://airflow.shop.internal"}) == "https://airflow.shop.internal"
    assert SERVICES["airflow-apiserver"]["healthcheck"]["test"][-1] == "http://localhost:8080/api/v2/monitor/health"


def test_java_home_fits_the_hosts_architecture():
    [java_home] = re.findall(r"^ENV JAVA_HOME=(\S+)$", DOCKERFILE, re.M)
    assert not re.search("amd64|arm64|x86_64|aarch64", java_home), java_home
    [link] = re.findall(r'ln -s "(/usr/lib/jvm/java-17-openjdk-\$\(dpkg --print-architecture\))" (\S+)', DOCKERFILE)
    assert link[1] == java_home
    # the same Debian layout on this machine: the link's target exists for its architecture
    architecture = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    assert Path(link[0].replace("$(dpkg --print-architecture)", architecture), "bin", "java").exists()


# Compose service -> the processes `make cluster` starts for it (scripts/cluster.py, scripts/pipeline.py run);
# `postgres` is the local cluster both start first, the one-shot services are `init` (--start-dags) there.
COMPOSE_TO_CLUSTER = {
    "redis": ["redis"], "spark-master": ["spark-master"], "spark-worker": ["spark-worker-1", "spark-worker-2"],
    "airflow-apiserver": ["api-server"], "airflow-scheduler": ["scheduler"], "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"], "airflow-worker": ["celery-worker-1", "celery-worker-2"],
    "generator": ["generator"],
}


def test_compose_and_make_cluster_run_the_same_services_with_the_same_commands(tmp_path, monkeypatch):
    """docker-compose.yaml and `make cluster` are one deployment on two substrates: the same long-running
    services, the same programs in them, the same executor, broker, result backend and Spark master."""
    from scripts.cluster import Cluster
    from scripts.pipeline import AIRFLOW_COMPONENTS, FEED

    monkeypatch.setattr("scripts.cluster.shutil.which", lambda name: f"/usr/bin/{name}")
    cluster = Cluster(root=tmp_path)
    processes = {p.name: p for p in [*cluster.infrastructure({}), *cluster.workers({})]}
    started = set(processes) | set(AIRFLOW_COMPONENTS) | {FEED}
    long_running = {name for name, service in SERVICES.items() if service.get("restart") != "no"} - {"postgres"}
    assert set(COMPOSE_TO_CLUSTER) == long_running
    # and both start a dead one again: Compose by its policy, `make cluster` by Supervisor(restart=True)
    assert {SERVICES[name]["restart"] for name in long_running} == {"unless-stopped"}
    assert {name for names in COMPOSE_TO_CLUSTER.values() for name in names} == started

    # the same programs: Airflow's components and Celery worker, Spark's master and worker classes, Redis
    for service, name in (("airflow-apiserver", "api-server"), ("airflow-scheduler", "scheduler"),
                          ("airflow-dag-processor", "dag-processor"), ("airflow-triggerer", "triggerer")):
        assert SERVICES[service]["command"] == name
    assert SERVICES["airflow-worker"]["command"] == "celery worker"
    assert processes["celery-worker-1"].command[1:3] == ["celery", "worker"]
    for service, name in (("spark-master", "spark-master"), ("spark-worker", "spark-worker-1")):
        assert SERVICES[service]["command"][1] == processes[name].command[1], service
    assert processes["redis"].command[0].endswith("redis-server")

    # the same executor, broker kind, result backend (the metadata database) and Spark master as spark_default
    from scripts.airflow_env import project_metadata_url

    metadata = project_metadata_url(Settings(), {"AIRFLOW_DB_PASSWORD": "m"})
    compose, local = env_of("airflow-scheduler"), cluster.airflow_env(metadata)
    assert compose["AIRFLOW__CORE__EXECUTOR"] == local["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert compose["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and local["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    for env in (compose, local):
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("/airflow")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://airflow:")  # the metadata's role
    # and the same scheduler loop as make run's environment, which make cluster adds to (its idle sleep sets
    # how long each task waits for the next one)
    from scripts.airflow_env import airflow_environment

    base = airflow_environment(Settings(), {"AIRFLOW_HOME": str(tmp_path / "airflow")})
    assert compose["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == base["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"]
    master = json.loads(local["AIRFLOW_CONN_SPARK_DEFAULT"])["host"]
    assert master == cluster.spark_url and master in processes["spark-worker-1"].command
    assert json.loads(compose["AIRFLOW_CONN_SPARK_DEFAULT"])["host"] in SERVICES["spark-worker"]["command"]
