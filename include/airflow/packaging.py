"""Package the project code Spark imports as a zip for ``--py-files``: ``spark_jobs/``, the contract, the
storage layer (without its schema migrations) and the few pure modules below them (settings, names, fault
hooks). Nothing of Airflow, GX, publish, ops, the UI or the migrations goes to the executors;
``tests/test_layers.py`` checks that this list covers everything the Spark jobs import.

spark-submit ships the zip to the driver and every executor, so the same DAG works for ``local[*]`` and for
a standalone cluster. The zip is named by the hash of its sources: building it again for unchanged code
returns the same file, and two runs building at once never see a half-written archive. Each module goes with
its bytecode, so the workers do not compile it at every start.

It is written under the project's ``data/code`` directory, not the machine's temp dir: with CeleryExecutor
``package_code`` and ``ingest`` may run on different Airflow workers, which share the data directory (the
``pipeline-data`` volume of docker-compose.yaml) but not their ``/tmp``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import time
import zipfile
from pathlib import Path

from include.settings import PROJECT_ROOT

PACKAGES = ("spark_jobs", "include/contract", "include/storage")
MODULES = ("include/__init__.py", "include/settings.py", "include/names.py", "include/faults.py")
# The schema's migrations (Alembic, SQLAlchemy) run at the start-up as the schema's owner, never on an executor.
LEFT_OUT = ("include/storage/migrations",)
_SUFFIXES = (".py", ".sql", ".json", ".yaml")
CODE_ARCHIVE_DIR = PROJECT_ROOT / "data" / "code"
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip entries carry no build time, so equal code gives equal bytes


def _sources(root: Path) -> list[Path]:
    return sorted(
        [path for package in PACKAGES for path in (root / package).rglob("*")
         if path.is_file() and path.suffix in _SUFFIXES and "__pycache__" not in path.parts
         and not any(path.is_relative_to(root / left_out) for left_out in LEFT_OUT)]
        + [root / module for module in MODULES]
    )


def _bytecode(source: bytes, name: str) -> bytes:
    """``name``'s compiled module as a hash-checked ``.pyc``.

    Python imports from a zip without writing bytecode anywhere, so without these every Spark Python worker
    and driver compiles each module it imports at every start (docs/performance.md, "Figures behind choices in
    the code"). zipimport takes ``module.pyc`` next to ``module.py``; a Python of another version (a cluster's
    executors) rejects its magic number and compiles the source, and a source that differs fails the hash."""
    import importlib.util
    from importlib._bootstrap_external import _code_to_hash_pyc

    code = compile(source, name, "exec", dont_inherit=True)
    return bytes(_code_to_hash_pyc(code, importlib.util.source_hash(source), checked=True))


def build_code_archive(output_dir: Path | None = None, root: Path = PROJECT_ROOT) -> Path:
    """Build (or reuse) the code zip under ``output_dir`` and return its path."""
    import sys

    output_dir = Path(output_dir or CODE_ARCHIVE_DIR)
    sources = [(path.relative_to(root).as_posix(), path.read_bytes()) for path in _sources(root)]
    # named by the sources and the Python that compiled the bytecode (marshal's bytes may differ between two
    # processes compiling the same code, so the bytecode itself cannot name the zip)
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())
    for name, content in sources:
        digest.update(f"{name}\0{len(content)}\0".encode() + content)
    target = output_dir / f"pipeline_code_{digest.hexdigest()[:16]}.zip"
    if not target.exists():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, content in sources:
                archive.writestr(zipfile.ZipInfo(name, date_time=_FIXED_TIME), content, zipfile.ZIP_DEFLATED)
                if name.endswith(".py"):
                    archive.writestr(zipfile.ZipInfo(name + "c", date_time=_FIXED_TIME), _bytecode(content, name),
                                     zipfile.ZIP_DEFLATED)
        content = buffer.getvalue()
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".pipeline_code_")
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return target


# --- Spark's class-data archive ---------------------------------------------------------------------------
# A spark-submit spends most of its start loading and verifying ~20,000 JVM classes from Spark's jars. Java's
# application class-data sharing (JEP 350) maps those classes from an archive written once by a training run,
# which halves a short job's wall time and CPU (docs/performance.md, "Ingest", Class-data archive). The archive
# belongs to one JVM and one set of jars, so its name carries a hash of both; with the wrong archive, or none,
# the JVM starts as before.
#
# It is a cache of this machine's JVM, so it lives in the user's cache directory, shared by every checkout
# (a second clone, the test suite's copies) rather than in one checkout's data/.
CLASS_ARCHIVE_PREFIX = "spark_classes_"


def _class_archive_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ecommerce-pipeline"


def _spark_jars_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        return None
    jars = Path(next(iter(spec.submodule_search_locations))) / "jars"
    return jars if jars.is_dir() else None


def _java_binary() -> Path | None:
    import shutil

    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    return Path(java).resolve() if java and Path(java).exists() else None


def class_archive_path(output_dir: Path | None = None) -> Path | None:
    """Where this machine's archive for this JVM and these Spark jars lives (None without Java or PySpark)."""
    jars, java = _spark_jars_dir(), _java_binary()
    if jars is None or java is None:
        return None
    digest = hashlib.sha256(str(java).encode())
    digest.update(str(java.stat().st_mtime_ns).encode())
    for jar in sorted(jars.iterdir()):
        stat = jar.stat()
        digest.update(f"{jar.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Path(output_dir or _class_archive_dir()) / f"{CLASS_ARCHIVE_PREFIX}{digest.hexdigest()[:16]}.jsa"


# An archive no run has used for this long (another virtualenv, an older Spark or Java) is deleted by the next
# build; archives in use are shared by several checkouts at once, so in use is "touched recently".
CLASS_ARCHIVE_UNUSED_DAYS = 14


def driver_java_options(output_dir: Path | None = None) -> str:
    """``spark.driver.extraJavaOptions`` for a spark-submit: use the class-data archive when it exists (and
    mark it as in use)."""
    archive = class_archive_path(output_dir)
    if archive is None or not archive.exists():
        return "-Xshare:auto"
    with contextlib.suppress(OSError):
        os.utime(archive)
    return f"-XX:SharedArchiveFile={archive}"


def build_class_archive(output_dir: Path | None = None, timeout_s: float = 300, wait: bool = False) -> Path | None:
    """Write the class-data archive once, from a training run of ``spark_jobs/train_class_archive.py`` (the job's own
    transforms over a small stream, no database). Returns its path, or None when there is none yet; Spark then
    starts without it.

    Two callers at once (a file lock): one builds. The other returns None at once unless ``wait``: a DAG run or
    a `make run` starting next to a build (a training run of its own) starts its JVM without the archive rather
    than wait for it."""
    import fcntl
    import logging
    import subprocess
    import sys

    log = logging.getLogger(__name__)
    target = class_archive_path(output_dir)
    if target is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return target
    with open(target.parent / ".class_archive.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            log.info("another process is writing Spark's class-data archive; this JVM starts without it")
            return None
        if target.exists():
            return target
        partial = target.with_suffix(f".{os.getpid()}.partial")
        spark_submit = Path(sys.executable).parent / "spark-submit"
        command = [str(spark_submit if spark_submit.exists() else "spark-submit"), "--master", "local[2]",
                   "--conf", f"spark.driver.extraJavaOptions=-XX:ArchiveClassesAtExit={partial}",
                   "--py-files", str(build_code_archive()), str(PROJECT_ROOT / "spark_jobs" / "train_class_archive.py")]
        env = {**os.environ, "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}
        log.info("writing Spark's class-data archive (once per Java and Spark version): %s", target)
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("no class-data archive, Spark starts without it: %s", error)
            partial.unlink(missing_ok=True)
            return None
        if done.returncode != 0 or not partial.exists():
            log.warning("no class-data archive, Spark starts without it (exit %s): %s",
                        done.returncode, done.stderr[-2000:])
            partial.unlink(missing_ok=True)
            return None
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        unused_since = time.time() - CLASS_ARCHIVE_UNUSED_DAYS * 86400
        for stale in target.parent.glob(f"{CLASS_ARCHIVE_PREFIX}*.jsa"):
            with contextlib.suppress(OSError):
                if stale != target and stale.stat().st_mtime < unused_since:
                    stale.unlink()
        return target
