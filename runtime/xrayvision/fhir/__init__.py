"""FHIR R4: client, report parsing, report-to-exam matching, patient enrichment, poller."""
