"""Tests of xrayvision.fhir; not named ``fhir`` since tests/ is on sys.path and that
would shadow the ``fhir`` namespace package of fhir.resources."""
