"""The operator's Prometheus metrics (served on ``--metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("xrayvision_operator_reconciles_total", "Reconciliations by kind",
                     ["kind"])
RECONCILE_ERRORS = Counter("xrayvision_operator_reconcile_errors_total",
                           "Reconciliations that raised (kopf retries them)", ["kind"])
RECONCILE_SECONDS = Histogram("xrayvision_operator_reconcile_seconds",
                              "Duration of one reconciliation", ["kind"],
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
APISERVER_UP = Gauge("xrayvision_operator_apiserver_up",
                     "1 while the Kubernetes API server answered the last check")
