"""Helpers of ``bench/batch.py``: input generation, the raw-model floor, the report."""
