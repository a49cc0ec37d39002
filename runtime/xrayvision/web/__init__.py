"""HTTP: health, readiness and metrics for every process; the dashboard and API (web role)."""
