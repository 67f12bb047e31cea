-- Run once by the postgres image on an empty data directory (mounted into /docker-entrypoint-initdb.d by
-- compose.yaml): the Dagster instance uses the database POSTGRES_DB (dagster), the Iceberg SQL catalog its own.
CREATE DATABASE iceberg;
