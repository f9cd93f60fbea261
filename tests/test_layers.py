"""The layout's promises, checked on the source: each layer imports only below itself, the code shipped to
Spark never reaches Airflow, Great Expectations or the publish step, and there is no import cycle.

Every import counts, also the lazy ones inside functions (those run too, on whichever machine calls them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from include.airflow.packaging import _sources

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("include", "spark_jobs", "scripts", "dags", "plugins", "benchmarks")

# include's layers, lowest first; a module may import its own layer and the ones before it.
LAYERS = (
    ("include.settings", "include.names", "include.faults", "include.results"),
    ("include.contract",),
    ("include.storage",),
    ("include.quality",),
    ("include.publish",),
    ("include.ops",),
    ("include.airflow",),
)
NEVER_ON_EXECUTORS = ("airflow", "great_expectations", "include.publish", "include.quality", "include.ops",
                      "include.airflow", "include.results", "scripts", "dags", "plugins")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from include.ops import alerts` imports include.ops.alerts when that is a module or a package
            found |= {f"{node.module}.{alias.name}" if _is_module(f"{node.module}.{alias.name}") else node.module
                      for alias in node.names}
    return found


GRAPH = {_module_name(p): _imports(p) for package in PROJECT_PACKAGES for p in (ROOT / package).rglob("*.py")}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _layer(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if _within(module, layer)), None)


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [m for m in GRAPH.get(module, ()) if m in GRAPH]
    return seen


def test_every_include_module_belongs_to_a_layer():
    assert [m for m in GRAPH if m.startswith("include.") and _layer(m) is None] == []


def test_each_layer_imports_only_below_itself():
    upward = [(module, imported) for module, imports in GRAPH.items() if _layer(module) is not None
              for imported in imports if _layer(imported) is not None and _layer(imported) > _layer(module)]
    assert upward == []


@pytest.mark.parametrize("package", ["spark_jobs", "include.contract", "include.storage"])
def test_code_that_runs_on_spark_executors_never_reaches_airflow_gx_or_publish(package):
    reached = {imported for module in GRAPH if _within(module, (package,))
               for imported in set().union(*(GRAPH[m] for m in _closure(module)))}
    assert sorted(m for m in reached if _within(m, NEVER_ON_EXECUTORS)) == []


def test_the_contract_is_pure():
    """No database, no Spark, no files: the contract is data and functions of it."""
    reached = {m for module in GRAPH if _within(module, ("include.contract",)) for m in GRAPH[module]}
    assert sorted(m for m in reached if _within(m, ("psycopg", "pyspark", "pyarrow", "include.storage"))) == []


def test_no_import_cycle():
    cycles = [module for module in GRAPH
              if any(module in _closure(imported) for imported in GRAPH[module] if imported in GRAPH)]
    assert cycles == []


def test_the_spark_code_archive_holds_everything_the_jobs_import_and_nothing_else():
    shipped = {_module_name(p) for p in _sources(ROOT) if p.suffix == ".py"}
    needed = set().union(*(_closure(m) for m in GRAPH if _within(m, ("spark_jobs",))))
    assert needed - shipped == set()
    assert sorted(m for m in shipped if _within(m, NEVER_ON_EXECUTORS)) == []


def test_the_schema_migrations_never_reach_the_executors():
    """Alembic and SQLAlchemy apply the schema's revisions at the start-up, as the schema's owner: nothing the
    Spark jobs import reaches them, and the code zip leaves ``include/storage/migrations`` out."""
    migrations = ("include.storage.migrations", "alembic", "sqlalchemy")
    jobs = set().union(*(_closure(m) for m in GRAPH if _within(m, ("spark_jobs",))))
    reached = jobs | set().union(*(GRAPH[m] for m in jobs))
    assert sorted(m for m in reached if _within(m, migrations)) == []
    shipped = {_module_name(p) for p in _sources(ROOT) if p.suffix == ".py"}
    assert sorted(m for m in shipped if _within(m, migrations)) == []
    assert "include.storage.migrations.runner" in GRAPH  # the test sees the package it keeps out
