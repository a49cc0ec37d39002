"""Every Prometheus metric of the runtime, defined once.

Names are ``xrayvision_*`` in base units. Labels never carry patient data: only roles,
statuses, outcomes, operation and region names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

BUILD = Info("xrayvision_build", "Version of the running XRayVision")
ROLE_UP = Gauge("xrayvision_role_up", "1 while a role runs in this process", ["role"])
ROLE_RESTARTS = Counter("xrayvision_role_restarts_total",
                        "Roles restarted in-process after they stopped with an error", ["role"])
READY = Gauge("xrayvision_ready", "1 when the database is reachable and its schema current")

DB_OPERATION_SECONDS = Histogram(
    "xrayvision_db_operation_seconds",
    "Duration of one repository operation (a transaction)",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_ERRORS = Counter(
    "xrayvision_db_errors_total", "Repository operations that failed", ["operation", "kind"]
)
DB_RETRIES = Counter(
    "xrayvision_db_retries_total", "Transactions retried after a lost connection or a busy lock"
)

QUEUE_TRANSITIONS = Counter(
    "xrayvision_queue_transitions_total",
    "Exam queue operations by kind (claim, complete, fail, error, release, requeue, reclaim)",
    ["transition"],
)

EVENTS_PUBLISHED = Counter("xrayvision_events_published_total", "Events published", ["type"])
EVENTS_RECEIVED = Counter("xrayvision_events_received_total", "Events received", ["type"])
EVENTS_DROPPED = Counter(
    "xrayvision_events_dropped_total",
    "Events not delivered (bus down or a subscriber too slow); sweeps catch up",
    ["reason"],
)
EVENT_BUS_RECONNECTS = Counter(
    "xrayvision_event_bus_reconnects_total", "Times the LISTEN connection was re-established"
)

SINGLETON_HELD = Gauge(
    "xrayvision_singleton_held", "1 while this process holds a singleton lock", ["name"]
)

MAINTENANCE_RUNS = Counter(
    "xrayvision_maintenance_runs_total", "Maintenance runs by outcome", ["outcome"]
)
MAINTENANCE_PURGED = Counter(
    "xrayvision_maintenance_purged_total", "Items removed by maintenance", ["kind"]
)
BACKUP_LAST_SUCCESS = Gauge(
    "xrayvision_backup_last_success_timestamp_seconds", "Time of the last successful backup"
)

DICOM_ASSOCIATIONS = Counter(
    "xrayvision_dicom_associations_total",
    "DICOM associations by outcome (accepted, rejected, aborted)", ["outcome"],
)
DICOM_INSTANCES = Counter(
    "xrayvision_dicom_instances_total",
    "Instances received by outcome (stored, duplicate, failed), source (scp, import) and "
    "region (unknown when refused)", ["outcome", "source", "region"],
)
DICOM_STORE_SECONDS = Histogram(
    "xrayvision_dicom_store_seconds",
    "Time from a C-STORE request to its durable record (the ACK's latency)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONVERSIONS = Counter(
    "xrayvision_conversions_total",
    "DICOM-to-PNG conversions by outcome (queued, ignore, error) and region", ["outcome", "region"],
)
CONVERT_SECONDS = Histogram(
    "xrayvision_convert_seconds",
    "DICOM-to-PNG conversion time (decode, window, gamma, resize, encode)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

QR_RUNS = Counter(
    "xrayvision_query_retrieve_runs_total", "Query/retrieve runs by outcome", ["outcome"])
QR_STUDIES = Counter(
    "xrayvision_query_retrieve_studies_total",
    "Studies handled by query/retrieve by outcome (retrieved, failed, skipped)", ["outcome"])
QR_LAST_SUCCESS = Gauge(
    "xrayvision_query_retrieve_last_success_timestamp_seconds",
    "Time of the last query/retrieve run that finished without failures")

MODEL_REQUEST_SECONDS = Histogram(
    "xrayvision_model_request_seconds",
    "Model request duration by call (report, check, translate, analyse) and endpoint",
    ["call", "endpoint"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
MODEL_REQUESTS = Counter(
    "xrayvision_model_requests_total",
    "Model requests by call, endpoint and outcome (ok, error, timeout, bad_response)",
    ["call", "endpoint", "outcome"],
)
MODEL_ENDPOINT_UP = Gauge("xrayvision_model_endpoint_up", "1 while a model endpoint is healthy",
                          ["endpoint"])
MODEL_ACTIVE = Gauge("xrayvision_model_endpoint_active",
                     "1 for the endpoint requests go to now", ["endpoint"])
MODEL_DEGRADED = Gauge("xrayvision_model_endpoint_degraded",
                       "1 while a model endpoint fails its known-answer probes (no traffic)",
                       ["endpoint"])
MODEL_PROBE_PASSING = Gauge(
    "xrayvision_model_probe_passing",
    "1 when the endpoint passed its last known-answer probe round, 0 when it failed it",
    ["endpoint"])
MODEL_PROBE_RUNS = Counter(
    "xrayvision_model_probe_runs_total",
    "Known-answer probe rounds by outcome (passed, failed, unreachable: not judged)",
    ["endpoint", "outcome"])
MODEL_PROBE_SECONDS = Histogram(
    "xrayvision_model_probe_seconds", "Seconds one probe case took (read and CHK)",
    ["endpoint"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
MODEL_PROBE_LAST_RUN = Gauge(
    "xrayvision_model_probe_last_run_timestamp_seconds",
    "When the endpoint's last probe round ended (Unix time)", ["endpoint"])
SHADOW_READS = Counter(
    "xrayvision_shadow_reads_total",
    "Copies of reads for the shadow model by outcome (stored, failed, skipped_rate, "
    "skipped_busy)", ["outcome"])
MODEL_AGREEMENT = Gauge(
    "xrayvision_model_agreement_ratio",
    "Share of compared units where a model's severity class (at the threshold) matches "
    "the reference's, over the FHIR lookback window; model from a bounded set "
    "(the configured models, else 'other')", ["model", "role", "reference"])
MODEL_COMPARED = Gauge(
    "xrayvision_model_compared_units",
    "Units (studies or images) behind xrayvision_model_agreement_ratio",
    ["model", "role", "reference"])
MODEL_FAILOVERS = Counter("xrayvision_model_failovers_total",
                          "Requests moved to the other endpoint after a failure", ["from_endpoint"])
MODEL_TOKENS = Counter("xrayvision_model_tokens_total", "Tokens reported in `usage`",
                       ["endpoint", "kind"])
EXAMS_PROCESSED = Counter("xrayvision_exams_processed_total",
                          "Exams through the AI pipeline by outcome (done, retry, error, released)",
                          ["outcome"])
SEVERITY = Counter("xrayvision_severity_total",
                   "Reports by source (ai, rad), region and severity (-1..10)",
                   ["source", "region", "severity"])
RECEIPT_TO_REPORT_SECONDS = Histogram(
    "xrayvision_receipt_to_report_seconds",
    "Time from receiving an exam to its AI report: the service-level figure",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600),
)
QUEUE_DEPTH = Gauge("xrayvision_queue_depth",
                    "Exams by status (exported by the queue-metrics singleton only)", ["status"])
QUEUE_OLDEST_SECONDS = Gauge("xrayvision_queue_oldest_seconds",
                             "Age of the oldest exam waiting for the model (singleton only)")
NOTIFICATIONS = Counter("xrayvision_notifications_total", "ntfy notifications by outcome",
                        ["outcome"])

FHIR_REQUESTS = Counter(
    "xrayvision_fhir_requests_total",
    "FHIR requests (each try) by resource type and outcome (ok, not_found, client_error, "
    "server_error, throttled, timeout, connect_error, bad_response; unavailable: gave up)",
    ["resource", "outcome"],
)
FHIR_REPORTS = Counter(
    "xrayvision_fhir_reports_total",
    "Radiologist reports handled by the poller by outcome (new, amended, unchanged, "
    "unmatched, withdrawn, not_imaging; ambiguous ones: xrayvision_fhir_matches_ambiguous_total)",
    ["outcome"],
)
FHIR_AMBIGUOUS = Counter("xrayvision_fhir_matches_ambiguous_total",
                         "DiagnosticReports that matched exams of more than one study (not linked)")
FHIR_POLL_SECONDS = Histogram(
    "xrayvision_fhir_poll_seconds", "Duration of one FHIR poll cycle",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
FHIR_POLL_LAST_SUCCESS = Gauge("xrayvision_fhir_poll_last_success_timestamp_seconds",
                               "Time of the last FHIR poll cycle that finished without errors")
FHIR_HEALTHY = Gauge("xrayvision_fhir_healthy",
                     "1 when the last FHIR poll cycle and the start-up self-check (credentials, "
                     "identifier system) found nothing wrong, else 0")
FHIR_POLL_FAILURES = Counter("xrayvision_fhir_poll_failures_total",
                             "FHIR poll cycles that failed (the poller backs off)")
FHIR_ENRICHMENT = Counter(
    "xrayvision_fhir_enrichment_total",
    "Patient enrichment lookups by outcome (hit, cached, miss, error, skipped)", ["outcome"])
AGREEMENT = Gauge(
    "xrayvision_agreement_exams",
    "Exams by AI/radiologist agreement class (TP, TN, FP, FN, not_assessed) at the severity "
    "threshold, by region, over the FHIR lookback window",
    ["region", "agreement"],
)

HTTP_REQUEST_SECONDS = Histogram(
    "xrayvision_http_request_seconds",
    "HTTP request duration by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WS_CLIENTS = Gauge("xrayvision_websocket_clients", "Connected dashboard WebSocket clients")
WS_DROPPED = Counter("xrayvision_websocket_dropped_total",
                     "WebSocket clients dropped because they could not keep up")
AUTH_FAILURES = Counter("xrayvision_auth_failures_total",
                        "Failed HTTP authentications by reason (missing, malformed, wrong, "
                        "locked, session: a sign-in cookie ended or unknown)",
                        ["reason"])
RATE_LIMITED = Counter("xrayvision_rate_limited_total", "Requests refused with 429")

# The results outbox, per destination (dicom: SR to the PACS; fhir: the HIS).
RESULTS_SENT = Counter("xrayvision_results_sent_total",
                       "AI read results delivered, by destination", ["destination"])
RESULTS_FAILED = Counter(
    "xrayvision_results_failed_total",
    "Failed sends of AI read results, by destination and outcome (retry: tried again "
    "later; dead: given up, kept for an admin)", ["destination", "outcome"])
RESULTS_PENDING = Gauge("xrayvision_results_pending",
                        "AI read results waiting to be sent, by destination", ["destination"])
RESULTS_DEAD = Gauge("xrayvision_results_dead",
                     "AI read results given up after their tries, by destination",
                     ["destination"])
RESULTS_OLDEST_SECONDS = Gauge(
    "xrayvision_results_oldest_pending_seconds",
    "Age of the oldest AI read result waiting to be sent (0: none), by destination",
    ["destination"])
RESULTS_SEND_SECONDS = Histogram(
    "xrayvision_results_send_seconds", "Time to send one batch of results, by destination",
    ["destination"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
