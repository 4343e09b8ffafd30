"""Monitoring: what the served model recommended, what shoppers did next, drift, and the
actions a breach triggers (alert, retrain, rollback)."""
