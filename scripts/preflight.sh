#!/bin/sh
# What the machine must provide before `make` builds the virtualenv or starts anything (README "Prerequisites"),
# each missing piece reported in one line that says what to install:
#
#   scripts/preflight.sh python python3     the interpreter the virtualenv is made from: Python 3.11+ with venv
#   scripts/preflight.sh java postgres      Java 17+ for Spark, the PostgreSQL server binaries for the local cluster
#   scripts/preflight.sh redis              Redis, the Celery broker of `make cluster`
#   scripts/preflight.sh chromium jdbc      what `make test` adds: Chromium and its driver (the UI tests), PostgreSQL's
#                                           JDBC driver (the bench's seed-style peer, tested)
#
# Shell, not Python: the point is to stop an interpreter that is too old with a message, and code run by that
# interpreter could not rely on anything newer than what it is being checked for.
set -u

fail() {
  echo "make: $*" >&2
  exit 1
}

check_python() {
  python=$1
  command -v "$python" >/dev/null 2>&1 \
    || fail "no \`$python\` on PATH: install Python 3.11 or newer, or name one with e.g. \`make PYTHON=python3.12 run\`"
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
    || fail "\`$python\` did not run; name a working Python 3.11+ with e.g. \`make PYTHON=python3.12 run\`"
  major=${version%%.*}
  minor=${version#*.}
  if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 11 ]; }; then
    fail "\`$python\` is Python $version; the project needs 3.11 or newer: install one and name it with e.g. \`make PYTHON=python3.12 run\`"
  fi
  # Debian splits venv and ensurepip out of the interpreter; without them `-m venv` fails halfway
  "$python" -c 'import ensurepip, venv' >/dev/null 2>&1 \
    || fail "\`$python\` (Python $version) has no venv module: install it, e.g. \`sudo apt-get install python3-venv\` (or python$version-venv)"
}

check_java() {
  # spark-submit takes $JAVA_HOME/bin/java when JAVA_HOME is set, else java from PATH
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    java=$JAVA_HOME/bin/java
  else
    java=$(command -v java 2>/dev/null) \
      || fail "no \`java\` on PATH (Spark needs Java 17): install it, e.g. \`sudo apt-get install openjdk-17-jre-headless\`, or set JAVA_HOME"
  fi
  # `openjdk version "17.0.15" ...`, or `"1.8.0_402"` for Java 8
  version=$("$java" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | sed -n 1p)
  major=${version%%.*}
  [ "$major" = 1 ] && major=$(echo "$version" | cut -d. -f2)
  case $major in
    ''|*[!0-9]*) fail "could not read the version of $java (\`$java -version\`); Spark needs Java 17 or newer: e.g. \`sudo apt-get install openjdk-17-jre-headless\`" ;;
  esac
  [ "$major" -ge 17 ] \
    || fail "$java is Java $version; Spark 4 needs Java 17 or newer: install it, e.g. \`sudo apt-get install openjdk-17-jre-headless\`, and set JAVA_HOME"
}

check_chromium() {
  # the UI tests drive Debian's Chromium through its chromedriver (nothing is downloaded at test time)
  command -v chromium >/dev/null 2>&1 \
    || fail "no \`chromium\` on PATH (the UI tests need it): install it, e.g. \`sudo apt-get install chromium chromium-driver\`"
  command -v chromedriver >/dev/null 2>&1 \
    || fail "no \`chromedriver\` on PATH (the UI tests drive Chromium with it): install it, e.g. \`sudo apt-get install chromium-driver\`"
}

check_jdbc() {
  # the seed-style peer of the bench writes through PostgreSQL's JDBC driver, and its test runs in `make test`
  [ -f "${JDBC_JAR:-/usr/share/java/postgresql.jar}" ] \
    || fail "no PostgreSQL JDBC driver at ${JDBC_JAR:-/usr/share/java/postgresql.jar} (the bench's seed-style peer and its test): install it, e.g. \`sudo apt-get install libpostgresql-jdbc-java\`"
}

check_redis() {
  # the Celery broker of `make cluster`
  command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] \
    || fail "no \`redis-server\` on PATH (the Celery broker of make cluster): install it, e.g. \`sudo apt-get install redis-server\`"
}

check_postgres() {
  # The directories scripts/local_postgres.py looks in, in its order: PG_BIN_DIR, the newest
  # /usr/lib/postgresql/*/bin, the directory of pg_ctl on PATH. PG_BIN_DIR may come from the checkout's .env,
  # which `make` does not read: a plain NAME=value line there is honoured here too.
  bin_dir=${PG_BIN_DIR:-}
  if [ -z "$bin_dir" ] && [ -f .env ]; then
    bin_dir=$(sed -n "s/^[[:space:]]*\(export[[:space:]][[:space:]]*\)\{0,1\}PG_BIN_DIR=[\"']\{0,1\}\([^\"'#]*\).*/\2/p" .env \
      | tail -n 1 | sed 's/[[:space:]]*$//')
  fi
  if [ -n "$bin_dir" ]; then
    [ -x "$bin_dir/initdb" ] && [ -x "$bin_dir/pg_ctl" ] \
      || fail "PG_BIN_DIR=$bin_dir holds no initdb and pg_ctl: point it at the PostgreSQL server binaries (e.g. /usr/lib/postgresql/16/bin)"
    return 0
  fi
  newest=$(for dir in /usr/lib/postgresql/*/bin; do [ -d "$dir" ] && echo "$dir"; done | sort -t/ -k5,5n | tail -n 1)
  if [ -n "$newest" ]; then
    # a client-only package (psql) creates the directory too, and the newest one is the one that is used
    [ -x "$newest/initdb" ] && [ -x "$newest/pg_ctl" ] && return 0
    fail "$newest has no initdb and pg_ctl (only the PostgreSQL client?): install the server, e.g. \`sudo apt-get install postgresql\`, or set PG_BIN_DIR"
  fi
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  fail "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH: install them, e.g. \`sudo apt-get install postgresql\`, or set PG_BIN_DIR"
}

while [ $# -gt 0 ]; do
  case $1 in
    python) check_python "${2:?python: which interpreter?}"; shift 2 ;;
    java) check_java; shift ;;
    postgres) check_postgres; shift ;;
    redis) check_redis; shift ;;
    chromium) check_chromium; shift ;;
    jdbc) check_jdbc; shift ;;
    *) fail "scripts/preflight.sh: unknown check $1" ;;
  esac
done
