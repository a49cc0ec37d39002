"""An in-memory FHIR search server for benchmarks, answering only the searches the poller
and the enricher make, from indexes: so a benchmark measures the poller, not the search
engine of a test server (sekmet-fhir scans its store on chained searches, which dominates
at 10,000 reports). Not a FHIR server: no validation, no writes over HTTP.

``python fhir_index.py PORT RESOURCES.json PUBLIC_BASE_URL`` (a JSON list of resources).
Basic auth is not checked.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from aiohttp import web

INDEX = web.AppKey("index", dict)
BASE = web.AppKey("base", str)


def build(resources: list[dict]) -> dict:
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    patient_by_ident: dict[str, list[dict]] = defaultdict(list)
    reports_by_patient: dict[str, list[dict]] = defaultdict(list)
    for r in resources:
        if r["resourceType"] == "Patient":
            for ident in r.get("identifier", []):
                patient_by_ident[f"{ident.get('system', '')}|{ident['value']}"].append(r)
                patient_by_ident[ident["value"]].append(r)
        elif r["resourceType"] == "DiagnosticReport":
            reports_by_patient[r["subject"]["reference"]].append(r)
    return {"by_ref": by_ref, "patients": patient_by_ident, "reports": reports_by_patient}


def tokens_match(param: str | None, concepts: object) -> bool:
    """A token search parameter (``system|code`` or ``code``, comma-separated: any of)
    against a CodeableConcept or a list of them, as a FHIR server filters."""
    if not param:
        return True
    if isinstance(concepts, dict):
        concepts = [concepts]
    codings = [c for concept in concepts or [] for c in concept.get("coding", [])]
    for token in param.split(","):
        system, _, code = token.rpartition("|")
        if any(c.get("code") == code and ("|" not in token or c.get("system", "") == system)
               for c in codings):
            return True
    return False


def bundle(matches: list[dict], included: list[dict], base: str) -> dict:
    entries = [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                "search": {"mode": "match"}} for r in matches]
    entries += [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                 "search": {"mode": "include"}} for r in included]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
            "entry": entries}


async def search(request: web.Request) -> web.Response:
    index, base = request.app[INDEX], request.app[BASE]
    q = request.query
    kind = request.match_info["type"]
    if kind == "Patient":
        found = index["patients"].get(q.get("identifier", ""), [])
        return web.json_response(bundle(found, [], base))
    if kind == "DiagnosticReport":
        if "patient.identifier" in q:
            patients = index["patients"].get(q["patient.identifier"], [])
            refs = [f"Patient/{p['id']}" for p in patients]
        elif "subject" in q:
            refs = [q["subject"]]
        else:  # _lastUpdated alone: nothing was updated in a benchmark
            return web.json_response(bundle([], [], base))
        statuses = set(q.get("status", "final,amended,corrected").split(","))
        matches = [r for ref in refs for r in index["reports"].get(ref, [])
                   if r["status"] in statuses
                   and tokens_match(q.get("category"), r.get("category"))
                   and tokens_match(q.get("code"), r.get("code"))]
        included = {}
        for r in matches:
            refs = [x["reference"] for x in r.get("basedOn", []) + r.get("resultsInterpreter", [])
                    if "reference" in x]
            for ref in refs + [r["subject"]["reference"]]:
                if ref in index["by_ref"]:
                    included[ref] = index["by_ref"][ref]
        return web.json_response(bundle(matches, list(included.values()), base))
    return web.json_response({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "not-supported", "diagnostics": kind}]}, status=400)


def make_app(resources: list[dict], base: str) -> web.Application:
    app = web.Application()
    app[INDEX] = build(resources)
    app[BASE] = base

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"resourceType": "CapabilityStatement"})

    app.router.add_get("/fhir/metadata", metadata)
    app.router.add_get("/fhir/{type}", search)
    return app


if __name__ == "__main__":
    port, path, base = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    with open(path) as f:
        data = json.load(f)
    web.run_app(make_app(data, base), host="127.0.0.1", port=port, print=None,
                access_log=None)
