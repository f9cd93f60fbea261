-- docker-compose: the postgres image runs this once on an empty volume, so the Airflow metadata database
-- lives on the same server as the analytics database, as in the local setup.
CREATE DATABASE airflow;
