# Image for docker-compose.yaml: the official Airflow image plus Java (for spark-submit) and the project's
# pinned requirements. The project code is mounted, not baked in, exactly as in the local layout.
# The Spark master and workers run this image too (`spark-class` comes with the pinned pyspark): executors
# need the driver's Python minor version and the job's dependencies (psycopg, pyarrow), which only the same
# environment guarantees; the Spark jars are those of the pinned pyspark, so no Spark version can drift.
FROM apache/airflow:3.3.2-python3.11

USER root
# Debian names the JDK folder after the architecture (amd64, arm64): one link, so JAVA_HOME fits every host.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && ln -s "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)" /usr/lib/jvm/java-17 \
 && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17

USER airflow
# The runtime pins only: pytest, selenium, ruff and duckdb (requirements-dev.txt) have no business in production.
COPY requirements.txt constraints.txt /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/constraints.txt
