"""Prometheus metrics, served at ``GET /metrics``."""

from prometheus_client import Counter, Gauge, Histogram

DOCUMENTS_SUBMITTED = Counter("demat_documents_submitted_total", "Documents accepted at intake",
                              ["flow"])
INTAKE_REFUSED = Counter("demat_intake_refused_total", "Submissions refused", ["reason"])
JOB_RUNS = Counter("demat_job_runs_total", "Connector step runs by outcome",
                   ["connector", "outcome"])
STEP_SECONDS = Histogram("demat_step_seconds", "Duration of one connector step run",
                         ["connector"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                                                 60, 120))
JOBS_PUBLISHED = Counter("demat_jobs_published_total", "Jobs published by the relay", ["connector"])
JOBS_RECOVERED = Counter("demat_jobs_recovered_total",
                         "Jobs re-dispatched after a lost lease or a dead worker")
DOCUMENTS_BY_STATE = Gauge("demat_documents", "Documents by flow and state", ["flow", "state"])
BATCH_ITEMS = Histogram("demat_batch_items", "Items written per group commit", ["writer"],
                        buckets=(1, 2, 4, 8, 16, 32, 64))
