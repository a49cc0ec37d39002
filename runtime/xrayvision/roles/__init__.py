"""The roles a process runs (``[server] roles``), each ``async def run(rt: Runtime)`` in
its module, started and supervised by ``serve``:

- ``ingest`` (:mod:`.ingest`): DICOM SCP, conversion to PNG, query/retrieve;
- ``relay`` (:mod:`.relay`): model reads of queued exams;
- ``fhir`` (:mod:`.fhir`): radiologists' reports from the HIS;
- ``web`` (:mod:`.web`): REST API, live updates, dashboard.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from xrayvision.roles import fhir, ingest, relay, web
from xrayvision.runtime import Runtime

ROLES: dict[str, Callable[[Runtime], Awaitable[None]]] = {
    "ingest": ingest.run,
    "relay": relay.run,
    "fhir": fhir.run,
    "web": web.run,
}
