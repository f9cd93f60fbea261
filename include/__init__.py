"""Domain code shared by the DAGs, the Spark job and the tests: settings, schema registry, SQL, generator."""
