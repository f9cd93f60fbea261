"""Placeholder secrets and the default login are refused wherever the UI can be reached from another machine.

`make run` binds the UI to 127.0.0.1, where `admin` / `admin` and secrets made up on this machine are fine. The
UI listens beyond loopback when AIRFLOW__API__HOST says so (Airflow's own default is 0.0.0.0, which is what a
container gets) or when it runs under Docker Compose (PIPELINE_DEPLOYMENT=compose): then a secret that is a
placeholder (`change-me` from .env.example passes Compose's required-variable guards), a known default
(`spark123`) or too short to resist guessing, and the default admin password, stop start-up with a message
naming each one. Checked by start-up (scripts/pipeline.py: `make run`, `make cluster`, Compose's airflow-init)
and by the api-server itself as it starts (plugins/airflow_local_settings.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

# values that are somebody's example, not a secret
PLACEHOLDERS = frozenset({"change-me", "changeme", "change_me", "admin", "password", "secret", "spark123",
                          "airflow", "postgres", "example", "xxx", "todo"})
MIN_SECRET_LENGTH = 16  # the signing secrets: `openssl rand -hex 32` gives 64

# variable -> what it is; signing secrets must also be long
SIGNING_SECRETS = {"AIRFLOW__API_AUTH__JWT_SECRET": "the secret that signs the UI's and API's tokens",
                   "AIRFLOW__API__SECRET_KEY": "the secret that signs the UI's sessions"}
PASSWORDS = {"POSTGRES_PASSWORD": "the database administrator's password",
             "POSTGRES_OWNER_PASSWORD": "the schema owner's password",
             "POSTGRES_WRITER_PASSWORD": "the pipeline's database password",
             "POSTGRES_READER_PASSWORD": "the reader's database password",
             "AIRFLOW_DB_PASSWORD": "Airflow's metadata database password"}


class ExposedWithPlaceholders(RuntimeError):
    """The UI would listen beyond loopback with a placeholder secret or the default login."""


def is_placeholder(value: str) -> bool:
    text = value.strip().lower()
    return not text or text in PLACEHOLDERS or "change-me" in text or "changeme" in text


def exposed(environ: Mapping[str, str]) -> str | None:
    """Why the UI is reachable beyond this machine, or None when it listens on loopback only."""
    if environ.get("PIPELINE_DEPLOYMENT", "").strip().lower() == "compose":
        return "it runs under Docker Compose"
    host = (environ.get("AIRFLOW__API__HOST") or "0.0.0.0").strip()  # noqa: S104 - Airflow's default, named
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass
    return f"the UI listens on {host} (AIRFLOW__API__HOST), beyond loopback"


def problems(environ: Mapping[str, str]) -> list[str]:
    """What must change before the UI may listen beyond loopback (empty when nothing, or when it does not)."""
    found = []
    admin = environ.get("AIRFLOW_ADMIN_PASSWORD") or _password_in_file(environ)
    if is_placeholder(admin):
        found.append("AIRFLOW_ADMIN_PASSWORD is " + (f"{admin!r}, a placeholder" if admin.strip() else
                                                      "unset, so the login would be admin / admin"))
    for name, what in SIGNING_SECRETS.items():
        value = environ.get(name, "")
        if name in environ and (is_placeholder(value) or len(value.strip()) < MIN_SECRET_LENGTH):
            found.append(f"{name} ({what}) is a placeholder or shorter than {MIN_SECRET_LENGTH} characters: "
                         "anyone who knows it can sign a token the UI accepts")
    for name, what in PASSWORDS.items():
        if environ.get(name, "").strip() and is_placeholder(environ[name]):
            found.append(f"{name} ({what}) is the placeholder {environ[name]!r}")
    return found


def _password_in_file(environ: Mapping[str, str]) -> str:
    """The admin's password in the simple auth manager's file (the api-server has no AIRFLOW_ADMIN_PASSWORD)."""
    import json
    from pathlib import Path

    path = environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    try:
        return str(json.loads(Path(path).read_text()).get("admin", "")) if path else ""
    except (OSError, ValueError, AttributeError):
        return ""


def refuse_placeholders(environ: Mapping[str, str]) -> None:
    """Raise ``ExposedWithPlaceholders`` naming every placeholder, when the UI is reachable from elsewhere."""
    reason = exposed(environ)
    if reason and (found := problems(environ)):
        raise ExposedWithPlaceholders(
            f"refusing to start: {reason}, and " + "; ".join(found)
            + ". Set your own values (e.g. `openssl rand -hex 32` for a secret) in .env or the environment, "
              "or keep the UI on 127.0.0.1 (unset AIRFLOW__API__HOST).")
