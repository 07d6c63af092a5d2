"""Operating a project: health, SLOs and error budgets, cost per 1k, exports for Prometheus
and Grafana. Computed from what every server process publishes to the project's store
(``publish.py``), so a report covers every worker and survives restarts."""
