"""Package the project code Spark imports as a zip for ``--py-files``: ``spark_jobs/``, the contract, the
storage layer and the few pure modules below them (settings, names, fault hooks). Nothing of Airflow, GX,
publish, ops or the UI goes to the executors; ``tests/test_layers.py`` checks that this list covers
everything the Spark jobs import.

spark-submit ships the zip to the driver and every executor, so the same DAG works for ``local[*]`` and for
a standalone cluster. The zip is named by the hash of its content: building it again for unchanged code
returns the same file, and two runs building at once never see a half-written archive.

It is written under the project's ``data/code`` directory, not the machine's temp dir: with CeleryExecutor
``package_code`` and ``ingest`` may run on different Airflow workers, which share the data directory (the
``pipeline-data`` volume of docker-compose.yaml) but not their ``/tmp``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

from include.settings import PROJECT_ROOT

PACKAGES = ("spark_jobs", "include/contract", "include/storage")
MODULES = ("include/__init__.py", "include/settings.py", "include/names.py", "include/faults.py")
_SUFFIXES = (".py", ".sql", ".json")
CODE_ARCHIVE_DIR = PROJECT_ROOT / "data" / "code"
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip entries carry no build time, so equal code gives equal bytes


def _sources(root: Path) -> list[Path]:
    return sorted(
        [path for package in PACKAGES for path in (root / package).rglob("*")
         if path.is_file() and path.suffix in _SUFFIXES and "__pycache__" not in path.parts]
        + [root / module for module in MODULES]
    )


def build_code_archive(output_dir: Path | None = None, root: Path = PROJECT_ROOT) -> Path:
    """Build (or reuse) the code zip under ``output_dir`` and return its path."""
    output_dir = Path(output_dir or CODE_ARCHIVE_DIR)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in _sources(root):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_FIXED_TIME)
            archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    content = buffer.getvalue()
    target = output_dir / f"pipeline_code_{hashlib.sha256(content).hexdigest()[:16]}.zip"
    if not target.exists():
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".pipeline_code_")
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return target
