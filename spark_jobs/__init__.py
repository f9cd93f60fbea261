"""What runs in spark-submit: the entry points (``ingest_events``, the every-minute stream; ``backfill_batch``, a
backfill's window; ``train_class_archive``, the training run of the JVM's class-data archive), the delivery
source they read, the session, the staging step they share (``stage``) and the pure transforms they chain."""
