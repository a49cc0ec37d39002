"""XRayVision: AI-assisted X-ray triage (DICOM ingest, vision-model reports, FHIR, dashboard)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xrayvision")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
