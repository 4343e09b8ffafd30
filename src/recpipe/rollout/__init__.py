"""Rollout: canary metrics (Prometheus or /metrics), pure decisions, the promote/rollback loop."""
