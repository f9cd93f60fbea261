"""Airflow's own public REST API, as the pipeline's tasks use it: what a backfill covers, and the notes and states
of the runs a covering run re-derived (include/airflow/backfill_runs.py).

A task in Airflow 3 cannot read or change other runs through its Execution API, so the pipeline calls the public
API like any script, with the credentials of the connection ``airflow_api`` (an ``http`` connection: host and
port of the api-server, a user allowed to edit DAG runs; `make run` defines it for the local admin). Without
that connection ``from_connection`` returns None and backfills still work, each run checking its own minute.
Plain ``requests``: no maintained client covers the API version of this Airflow, and five calls need no more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.names import AIRFLOW_API_CONN_ID

log = logging.getLogger(__name__)
PAGE = 100  # the API's largest page by default ([api] maximum_page_limit)


class AirflowApiError(RuntimeError):
    """The API answered with an error status; the message carries Airflow's explanation."""


@dataclass(frozen=True)
class Backfill:
    id: int
    from_date: datetime
    to_date: datetime
    is_paused: bool


class AirflowApi:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30) -> None:
        self.base_url, self.username, self.password, self.timeout = base_url.rstrip("/"), username, password, timeout
        self._token: str | None = None

    @classmethod
    def from_connection(cls, conn_id: str = AIRFLOW_API_CONN_ID) -> AirflowApi | None:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            connection = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            log.info("no %r connection: backfill runs are not closed through the REST API", conn_id)
            return None
        scheme = connection.schema or "http"
        port = f":{connection.port}" if connection.port else ""
        return cls(f"{scheme}://{connection.host}{port}", connection.login or "", connection.password or "")

    def _request(self, method: str, path: str, *, params: dict | None = None, body: Any = None) -> Any:
        import requests

        if self._token is None:
            answer = requests.post(f"{self.base_url}/auth/token", timeout=self.timeout,
                                   json={"username": self.username, "password": self.password})
            self._check(answer, "POST /auth/token")
            self._token = answer.json()["access_token"]
        answer = requests.request(method, f"{self.base_url}{path}", params=params, json=body, timeout=self.timeout,
                                  headers={"Authorization": f"Bearer {self._token}"})
        self._check(answer, f"{method} {path}")
        return answer.json() if answer.content else None

    @staticmethod
    def _check(answer, what: str) -> None:
        if answer.status_code >= 400:
            raise AirflowApiError(f"{what}: {answer.status_code} {answer.text[:500]}")

    def backfill_of(self, dag_id: str, run_after: datetime) -> Backfill | None:
        """The backfill of ``dag_id`` not yet completed whose dates hold a run's ``run_after`` (Airflow allows one;
        a backfill's from and to dates are the runs' run-after times, the logical dates a schedule period earlier)."""
        answer = self._request("GET", "/api/v2/backfills", params={"dag_id": dag_id, "limit": PAGE})
        for item in answer["backfills"]:
            start, end = (datetime.fromisoformat(item[k]) for k in ("from_date", "to_date"))
            if item["completed_at"] is None and start <= run_after <= end:
                return Backfill(item["id"], start, end, item["is_paused"])
        return None

    def runs(self, dag_id: str, *, run_type: str, run_after_from: datetime, run_after_to: datetime,
             states: tuple[str, ...] = ()) -> list[dict]:
        """The runs of ``dag_id`` of ``run_type`` to run after a time in [from, to] (in ``states``), oldest first."""
        found, offset = [], 0
        while True:
            params = {"run_type": run_type, "run_after_gte": run_after_from.isoformat(),
                      "run_after_lte": run_after_to.isoformat(), "order_by": "run_after", "limit": PAGE,
                      "offset": offset}
            if states:
                params["state"] = list(states)
            page = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params=params)["dag_runs"]
            found += page
            if len(page) < PAGE:
                return found
            offset += PAGE

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        from urllib.parse import quote

        try:
            return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")["state"]
        except AirflowApiError:
            return None

    def update_runs(self, dag_id: str, updates: list[dict]) -> int:
        """Set the state and/or note of runs of ``dag_id`` (``{"dag_run_id", "state"?, "note"?}`` each), a page at a
        time through the bulk endpoint; returns how many were updated."""
        done = 0
        for first in range(0, len(updates), PAGE):
            chunk = updates[first:first + PAGE]
            mask = sorted({key for update in chunk for key in update} - {"dag_run_id"})
            answer = self._request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns", body={"actions": [
                {"action": "update", "entities": chunk, "update_mask": mask, "action_on_non_existence": "skip"}]})
            update = answer.get("update") or {}
            if update.get("errors"):
                raise AirflowApiError(f"updating runs of {dag_id}: {update['errors'][:3]}")
            done += len(update.get("success") or [])
        return done
