"""Data contract rules (Great Expectations suites) and the audit that runs them on staged rows."""
