"""Monitoring of the prediction log: drift, data quality, performance, alert rules, the alert store, the dashboard's data."""
