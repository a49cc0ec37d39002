"""DICOM: metadata, region rules and conversion (pure); SCP handlers, conversion worker and
import (I/O)."""
