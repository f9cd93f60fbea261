"""The Spark session every entry point builds, with the delivery source registered, and the driver's tie to
its JVM."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def build_spark(app_name: str = "ecommerce_events_ingest") -> SparkSession:
    from spark_jobs.delivery_source import DeliverySource

    spark = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.showConsoleProgress", "false")
        # A run lives for seconds and its story is in the Airflow task log; the web UI costs a part of every
        # start (docs/performance.md, "Ingest", Class-data archive).
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.dataSource.register(DeliverySource)
    return spark


def die_with_parent() -> None:
    """End this Python driver when the JVM that started it dies.

    spark-submit runs a Python application as a child of its JVM. When the JVM dies (out of memory, SIGKILL),
    nothing tells the child, which would sleep on forever holding its Py4J ports and ~150 MB. On Linux the
    kernel is asked to SIGKILL it with its parent (``PR_SET_PDEATHSIG``); elsewhere a thread watches the parent.
    Either way a parent already gone ends it at once."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        except (OSError, AttributeError):  # no libc prctl: the watcher below does it
            log.info("prctl unavailable; watching the parent process instead")
        else:
            if os.getppid() != parent:
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
