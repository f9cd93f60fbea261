"""The contract as data (``include/contract/contract.yaml``): a new schema version is an edit of that file.

The worked v4 copies the project's ``include/`` package, appends ``v4`` and a ``coupon_code`` column to
the copy's contract file, and nothing else: the copy then reads v4 files by their header, keeps reading v1-v3
files and stages the new column in COPY order. For PostgreSQL, `make migration` writes the revision that adds
it, which the next start applies; until then the start refuses to run (the tables change only by migrations)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import psycopg
import pytest

from include.contract.columns import CONTRACT_FILE, ContractError, load_contract
from include.settings import PROJECT_ROOT

V4_EDIT = """
# a worked v4: marketing adds coupons
  - {name: coupon_code, type: text, role: feed, since: v4}
"""

PROBE = textwrap.dedent("""
    import json, sys
    from include.contract.columns import PARSED_COLUMNS, STAGED_COLUMNS
    from include.contract.parser import parse_file
    from include.contract.versions import CANONICAL, VERSIONS
    v4 = CANONICAL.header + "\\n" + "e1,7,s1,view,42,books,9.99,1,vip,2026-01-01T10:00:00,mobile,app,DE,Bonn,google,c1,X10\\n"
    v3 = VERSIONS["v3"].header + "\\n" + "e2,7,s1,view,42,books,9.99,1,vip,2026-01-01T10:00:00,mobile,app,DE,Bonn,google,c1\\n"
    out = {"versions": list(VERSIONS), "canonical": CANONICAL.name, "staged": list(STAGED_COLUMNS),
           "parsed": list(PARSED_COLUMNS), "v4": list(parse_file(v4.encode(), "/l/a.csv")),
           "v3": list(parse_file(v3.encode(), "/l/b.csv"))}
    if len(sys.argv) > 1:
        from include.storage.migrations import SchemaError
        from include.storage.migrations.runner import upgrade_schema
        try:
            upgrade_schema(sys.argv[1])
        except SchemaError as error:
            out["refused"] = str(error)
    print(json.dumps(out))
""")


def edited_copy(tmp_path, edit) -> str:
    root = tmp_path / "tree"
    shutil.copytree(PROJECT_ROOT / "include", root / "include", ignore=shutil.ignore_patterns("__pycache__"))
    contract = root / "include" / "contract" / "contract.yaml"
    contract.write_text(edit(contract.read_text()))
    return str(root)


def v4(text: str) -> str:
    text = text.replace("versions: [v1, v2, v3]", "versions: [v1, v2, v3, v4]")
    anchor = "  - {name: campaign_id,"
    end = text.index("\n", text.index(anchor)) + 1
    return text[:end] + V4_EDIT.lstrip("\n") + text[end:]


def run_probe(root: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.unit
def test_a_new_version_is_an_edit_of_the_contract_file(tmp_path):
    out = run_probe(edited_copy(tmp_path, v4))
    assert out["versions"] == ["v1", "v2", "v3", "v4"] and out["canonical"] == "v4"
    [row4], [row3] = out["v4"], out["v3"]
    assert row4["schema_version"] == "v4" and row4["coupon_code"] == "X10" and row4["rescued_data"] is None
    assert row3["schema_version"] == "v3" and row3["coupon_code"] is None and row3["geo_city"] == "Bonn"
    # the new column takes its place in the staged row (COPY order) and in what Spark receives
    assert out["staged"].index("coupon_code") == out["staged"].index("campaign_id") + 1
    assert "coupon_code" in out["parsed"]


@pytest.mark.integration
@pytest.mark.db
def test_the_new_column_reaches_postgresql_by_the_migration_make_migration_writes(pipeline, tmp_path):
    with pipeline.scratch_database("contract_v4_probe") as target:
        assert "refused" not in run_probe(str(PROJECT_ROOT), target)  # today's contract first: a deployment
        root = edited_copy(tmp_path, v4)
        assert "no schema migration adds: coupon_code (text)" in run_probe(root, target)["refused"]
        written = subprocess.run(
            [sys.executable, "-c", "from include.storage.migrations.authoring import write_contract_revision as w; "
                                   "print(w().name)"],
            cwd=root, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": root}, timeout=120)
        assert written.returncode == 0, written.stderr[-3000:]
        assert written.stdout.strip().endswith("_contract_columns_coupon_code.py")
        assert "refused" not in run_probe(root, target)
        with psycopg.connect(target) as conn:
            typed = dict(conn.execute(
                "SELECT table_name, data_type FROM information_schema.columns WHERE column_name = 'coupon_code'"
            ).fetchall())
        assert typed == dict.fromkeys(
            ("staging_events", "audit_candidates", "revalidation_candidates", "ecommerce_events"), "text")


def _price_since_v2(text: str) -> str:
    line = next(line for line in text.splitlines() if "{name: price," in line)
    return text.replace(line, line.replace("since: v1", "since: v2"))


@pytest.mark.unit
@pytest.mark.parametrize(("edit", "problem"), [
    (_price_since_v2, "price: required since v2"),
    (lambda t: t.replace("role: derived}", "role: computed}", 1), "role 'computed'"),
    (lambda t: t.replace("type: boolean", "type: bool"), "type 'bool'"),
    (lambda t: t.replace("since: v3}", "since: v9}", 1), "needs `since`"),
    (lambda t: t.replace("since: v2}", "since: v2, not_empty: true}", 1), "session_id: not_empty but not required"),
])
def test_an_inconsistent_contract_file_is_refused_with_the_reason(tmp_path, edit, problem):
    path = tmp_path / "contract.yaml"
    path.write_text(edit(CONTRACT_FILE.read_text()))
    with pytest.raises(ContractError) as refused:
        load_contract(path)
    assert problem in str(refused.value)


@pytest.mark.unit
def test_the_data_contract_page_lists_the_versions_of_the_contract_file():
    """docs/data-contract.md, "Columns and schema versions": one table row per version, its columns as in the file."""
    from include.contract.versions import VERSIONS

    page = (PROJECT_ROOT / "docs" / "data-contract.md").read_text()
    listed: dict[str, set[str]] = {}
    for name in VERSIONS:
        row = next(line for line in page.splitlines() if line.startswith(f"| {name} | "))
        cell = row.split("|")[2]
        base = next((listed[v] for v in listed if f"{v} +" in cell), set())
        listed[name] = base | {c for part in cell.split("`")[1::2] for c in part.split(",")}
        assert listed[name] == set(VERSIONS[name].columns), (name, row)


@pytest.mark.unit
def test_the_spark_executors_read_the_contract_from_inside_the_code_zip(tmp_path):
    from include.airflow.packaging import build_code_archive

    archive = build_code_archive(tmp_path)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import include.contract.versions as v; "
             "assert '.zip' in v.__file__, v.__file__; print(','.join(v.VERSIONS))")
    done = subprocess.run([sys.executable, "-c", probe, str(archive)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={k: val for k, val in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "v1,v2,v3"


@pytest.mark.unit
def test_the_code_zip_carries_bytecode_the_workers_import_without_compiling(tmp_path):
    """Every module in the zip has its .pyc: a Spark worker imports the parser's modules and compiles none of
    them. Bytecode of another Python (another magic number) is passed over for the source."""
    import zipfile

    from include.airflow.packaging import build_code_archive

    archive = build_code_archive(tmp_path / "built")
    assert build_code_archive(tmp_path / "built") == archive  # the same code gives the same zip
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        assert {name + "c" for name in names if name.endswith(".py")} <= names
        foreign = tmp_path / "foreign.zip"
        with zipfile.ZipFile(foreign, "w") as out:
            for name in sorted(names):
                data = z.read(name)
                out.writestr(name, b"\0\0\r\n" + data[4:] if name.endswith(".pyc") else data)
    probe = ("import builtins, sys; compiled = []; real = builtins.compile\n"
             "def spy(source, name, *a, **k):\n compiled.append(name); return real(source, name, *a, **k)\n"
             "builtins.compile = spy; sys.path.insert(0, sys.argv[1])\n"
             "import spark_jobs.transforms, include.contract.parser\n"
             "print(sum('.zip' in str(n) or n.startswith(('spark_jobs', 'include')) for n in compiled))")
    clean_env = {k: val for k, val in os.environ.items() if k != "PYTHONPATH"}
    counts = []
    for zip_path in (archive, foreign):
        done = subprocess.run([sys.executable, "-c", probe, str(zip_path)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, env=clean_env)
        assert done.returncode == 0, done.stderr[-2000:]
        counts.append(int(done.stdout.strip()))
    assert counts[0] == 0
    assert counts[1] > 5  # the foreign bytecode was rejected and every module compiled from its source
