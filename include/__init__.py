"""The domain, imported by the DAGs, the Spark jobs, the UI and the tooling, one folder per role: the contract,
storage, quality, publish, ops and the Airflow extensions, over settings, names, fault hooks and task results."""
