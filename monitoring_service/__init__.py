"""The monitoring service: drift and live model quality of the champion, Airflow failures, retraining trigger.

`python -m monitoring_service` evaluates the last MONITOR_WINDOW_MINUTES of the prediction log every
MONITOR_INTERVAL_SECONDS and serves Prometheus gauges on /metrics and Evidently reports on /reports/.
"""
