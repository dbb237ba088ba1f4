"""Batch jobs built on batchcore: CSV crunching and image filtering, and the ``batchcore`` CLI."""
