"""Developer and operator tooling: the local PostgreSQL cluster, the Airflow environment, `make run`."""
