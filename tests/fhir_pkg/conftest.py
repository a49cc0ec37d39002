import uuid

import aiohttp
import pytest

from support.fhirpeer import PASSWORD, USER, Sekmet
from xrayvision.fhir.client import FhirClient, FhirServer


@pytest.fixture(scope="session")
def sekmet(tmp_path_factory):
    """One real FHIR R4 server (sekmet-fhir) for the session; tests use unique ids."""
    server = Sekmet(tmp_path_factory.mktemp("sekmet")).start()
    yield server
    server.stop()


@pytest.fixture
def tag():
    """A short unique prefix for the resource ids and patient ids of one test."""
    return uuid.uuid4().hex[:10]


def fhir_server(url: str, **kw) -> FhirServer:
    return FhirServer(url=url, username=USER, password=PASSWORD, **kw)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def sekmet_client(sekmet, http):
    return FhirClient(fhir_server(sekmet.url, timeout=10, max_attempts=2), http, backoff=0.01)
