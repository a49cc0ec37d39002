"""AI reads back to the hospital: built as DICOM SR (:mod:`.sr`) and FHIR resources
(:mod:`.fhir_resources`), sent from the results outbox by :mod:`.sender` (C-STORE to the
PACS, conditional updates to the HIS). docs/results.md says what is sent and when."""
