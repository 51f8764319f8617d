"""Monitoring: the prediction log, drift, data quality, performance, alert rules and the alert store."""
