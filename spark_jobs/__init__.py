"""Spark entry points (``ingest_events``) and the pure transforms they chain."""
