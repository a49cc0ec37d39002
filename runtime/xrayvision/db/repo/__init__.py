"""Repository functions, each ``fn(session, ...)``, one module per aggregate:

- :mod:`.exams`: patients and exams as ingest records them, conversion's outcome, the
  same-UID identity, enrichment of a patient, the retention purges;
- :mod:`.worklist`: the dashboard's filtered, paged list of exams;
- :mod:`.reports`: the AI's and the radiologist's reports, a read's context, reviews, the
  FHIR poller's reads;
- :mod:`.studies`: a study rolled up from its images, its read-per-study queue state,
  a study read's context and storage;
- :mod:`.agreement`: AI versus radiologist, counted by group;
- :mod:`.counts`: the queue's counts;
- :mod:`.outbox`: AI reads to send back to the PACS and the HIS, and what they say;
- :mod:`.state`: persisted key/value state, query/retrieve records, the audit log.

They never commit: ``Database.read``/``Database.write`` wrap each call in a transaction.
Returned ORM objects are detached-safe (the sessions do not expire on commit, and the
models have no lazy relationships). Callers use the package (``repo.get_exam``); the
names below are its whole interface.
"""

from xrayvision.db.repo.agreement import AGREEMENT_GROUPS, agreement_condition, agreement_counts
from xrayvision.db.repo.counts import newest_exam_row, oldest_claimable, queue_counts
from xrayvision.db.repo.exams import (
    IDENTITY_FIELDS,
    ExamInfo,
    ExamRow,
    PatientInfo,
    enrich_patient,
    exam_exists,
    exam_identity,
    exams_received_before,
    exams_with_status,
    finish_conversion,
    get_exam,
    identity_of,
    insert_received,
    study_images,
    study_sizes,
    upsert_patient,
)
from xrayvision.db.repo.outbox import (
    ImageRef,
    OutboxDepth,
    ReadDocument,
    claim_results,
    enqueue_results,
    outbox_depths,
    outbox_rows,
    read_document,
    read_documents,
    resend_result,
    result_failed,
    result_sent,
    results_sent,
    sent_before,
)
from xrayvision.db.repo.reports import (
    AIHistory,
    PollExam,
    ReportContext,
    Unlinked,
    ai_history,
    clear_unlinked,
    link_rad_report,
    note_unlinked,
    poll_exams,
    rad_history,
    raise_priority,
    read_of,
    report_context,
    retriage,
    review_ai_report,
    save_ai_read,
    save_rad_report,
    unchecked_rad_reports,
    unenriched_exams,
    unlinked_ids,
    unlinked_reports,
    withdraw_rad_reports,
)
from xrayvision.db.repo.sessions import (
    SignIn,
    close_session,
    find_session,
    open_session,
    touch_session,
)
from xrayvision.db.repo.shadow import (
    save_shadow_read,
    save_shadow_reads,
    shadow_agreement,
    shadow_reads_of,
)
from xrayvision.db.repo.state import (
    audit,
    audit_page,
    get_state,
    insert_state,
    record_retrieval,
    set_state,
    states_with_prefix,
    study_needs_retrieval,
)
from xrayvision.db.repo.studies import (
    StudyContext,
    StudyImageRef,
    get_study,
    purge_error_exams,
    refresh_study,
    requeue_study,
    rollup,
    save_study_read,
    study_context,
    study_key,
)
from xrayvision.db.repo.worklist import (
    MAX_PAGE_SIZE,
    SORTS,
    ExamFilter,
    Page,
    PageRow,
    StudyRow,
    count_matching,
    count_studies,
    exam_page,
    list_exams,
    shown_total,
    study_page,
)

__all__ = [
    "SignIn", "close_session", "find_session", "open_session", "touch_session",
    "AGREEMENT_GROUPS", "AIHistory", "IDENTITY_FIELDS", "MAX_PAGE_SIZE", "SORTS", "ExamFilter",
    "ExamInfo", "ExamRow",
    "Page", "PageRow", "PatientInfo", "PollExam", "ReportContext", "agreement_condition",
    "agreement_counts", "ai_history", "audit", "audit_page", "count_matching", "enrich_patient",
    "exam_exists",
    "exam_identity", "exam_page", "exams_received_before", "exams_with_status",
    "finish_conversion", "get_exam", "get_state", "identity_of", "insert_received",
    "insert_state", "list_exams", "oldest_claimable", "poll_exams", "purge_error_exams",
    "newest_exam_row", "queue_counts", "raise_priority", "record_retrieval", "report_context",
    "retriage",
    "review_ai_report",
    "save_ai_read", "save_rad_report", "set_state", "states_with_prefix",
    "study_needs_retrieval", "save_shadow_read", "save_shadow_reads", "shadow_agreement",
    "shadow_reads_of",
    "StudyContext", "StudyImageRef", "get_study", "link_rad_report", "read_of", "refresh_study",
    "requeue_study", "rollup",
    "save_study_read", "study_context", "study_key", "StudyRow", "count_studies",
    "study_page", "shown_total",
    "study_images", "study_sizes", "unchecked_rad_reports", "upsert_patient",
    "rad_history", "withdraw_rad_reports", "Unlinked", "clear_unlinked", "note_unlinked",
    "unlinked_reports", "unenriched_exams", "unlinked_ids",
    "ImageRef", "OutboxDepth", "ReadDocument", "claim_results", "enqueue_results",
    "outbox_depths", "outbox_rows", "read_document", "read_documents", "resend_result",
    "result_failed", "result_sent", "results_sent", "sent_before",
]
