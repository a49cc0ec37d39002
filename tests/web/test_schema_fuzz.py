"""schemathesis against a real web process: generated requests for every operation of
the OpenAPI document (a bounded number each, valid and invalid ones) get no 5xx, only
documented statuses and content types, bodies that match the documented schemas; what
the spec forbids is refused and what it allows is accepted."""

import subprocess
import sys

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from support.pacs import wait_port
from support.pgserver import free_port
from support.webproc import web_process
from web.conftest import USERS, basic
from xrayvision.config import DEFAULT_REGIONS
from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.db.migrate import upgrade
from xrayvision.web.api import load_spec

# The spec as the server serves it (/api/spec): with its configured (default) regions.
schema = schemathesis.openapi.from_dict(load_spec(DEFAULT_REGIONS))
# Requests that break the spec too: the server must refuse what the spec forbids
# (negative_data_rejection) and accept what it allows (positive_data_acceptance).
# Parameters the spec does not name are ignored, as HTTP APIs commonly do: not sent.
schema.config.generation.update(modes=list(GenerationMode), allow_extra_parameters=False)
STUB = __import__("pathlib").Path(__file__).parents[1] / "support" / "model_stub.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{tmp / 'fuzz.db'}"
    db = Database(DatabaseOptions(url=url))
    upgrade(db.engine)
    db.close()
    port = free_port()
    stub = subprocess.Popen([sys.executable, str(STUB), str(port)])
    try:
        wait_port(port)
        users = {name: f"{u.role}:{u.password_hash}" for name, u in USERS.items()}
        with web_process(tmp, url, users, XRAYVISION_WEB_RATE_LIMIT="0",
                         XRAYVISION_AI_PRIMARY_URL=f"http://127.0.0.1:{port}") as base:
            yield base
    finally:
        stub.terminate()
        stub.wait()


@schema.parametrize()
# Derandomized: the same cases every run, so CI never turns red by chance; a wider random
# run is `st run` (bench/README.md, "Reliability").
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case, server):
    case.call_and_validate(
        base_url=server, headers=basic("admin"),
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance, negative_data_rejection,
                positive_data_acceptance])
