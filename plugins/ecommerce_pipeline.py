"""Airflow plugin of the e-commerce pipeline.

Airflow loads every module in this folder at start-up; the UI pages (Data Docs, dead letters) and
listeners of later milestones register here.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class EcommercePipelinePlugin(AirflowPlugin):
    name = "ecommerce_pipeline"
