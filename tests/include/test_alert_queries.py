"""The SQL an alert suggests: composed, so a value from the feed is one string literal whatever it holds
(tests/integration/test_alert_queries_in_psql.py pastes it into a real psql)."""

from __future__ import annotations

import re

import pytest

from include.ops.alerts import queries
from include.ops.alerts.message import HIDDEN

pytestmark = pytest.mark.unit

HOSTILE = ["x'; DROP TABLE ecommerce_events; --", 'a\'b"c', "back\\slash'; --", "tick`and```fence",
           "line\nbreak\r\x1b[31m", "bidi\u202egnp.exe", "<!channel> <http://evil|click> &amp;"]

# an SQL string literal, standard ('it''s') or with escapes (E'back\\slash')
LITERAL = re.compile(r"E'(?:[^'\\]|''|\\.)*'|'(?:[^']|'')*'")


def test_the_dead_letter_query_cannot_be_broken_out_of_by_a_run_id():
    query = queries.dead_letters_of_run("manual__x'; DROP TABLE t; --")
    assert query.count("'") % 2 == 0 and "'manual__x''; DROP TABLE t; --'" in query


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_is_one_literal_without_backticks_or_invisible_characters(value):
    for query in (queries.dead_letters_of_run(value), queries.new_column_values(value)):
        statement = LITERAL.sub("'…'", query)  # what is left outside the string literals
        assert statement.count(";") == 1 and statement.endswith(";") and "DROP" not in statement, statement
        assert "`" not in query and not HIDDEN.search(query)  # a Slack code block stays closed, a log line whole


def test_backticks_and_invisible_characters_are_spelled_with_chr():
    assert queries.dead_letters_of_run("plain run").endswith("WHERE airflow_run_id = 'plain run' ORDER BY id;")
    assert queries.dead_letters_of_run("a`b\nc").endswith(
        "WHERE airflow_run_id = ('a' || chr(96) || 'b' || chr(10) || 'c') ORDER BY id;")
    assert queries.quarantined_file(7) == "SELECT * FROM quarantined_files WHERE id = 7;"
    assert queries.new_column_values("`").startswith("SELECT rescued_data->>(chr(96)), count(*)")
    assert queries.dead_letters_per_rule(5).endswith("failed_at > now() - make_interval(mins => 5) "
                                                     "GROUP BY rule ORDER BY 2 DESC;")
