"""Helpers for tests: the CRDs' schemas, structural defaulting as the API server does it,
schema validation (jsonschema) and the CEL rules (cel-python)."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema
import yaml

from conftest import ROOT

CRDS = {"XRayVision": ROOT / "crds" / "xrayvision.yaml",
        "ModelEndpoint": ROOT / "crds" / "modelendpoint.yaml"}
EXAMPLES = ROOT / "examples"


def schema_of(kind: str) -> dict:
    crd = yaml.safe_load(CRDS[kind].read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict, value: Any) -> Any:
    """Structural defaulting: a missing property with a default gets it, then defaults
    apply inside (what the API server does on create)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, sub in props.items():
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _plain_schema(schema: Any) -> Any:
    """The schema without Kubernetes extensions, for jsonschema."""
    if isinstance(schema, dict):
        return {k: _plain_schema(v) for k, v in schema.items()
                if not k.startswith("x-kubernetes")}
    if isinstance(schema, list):
        return [_plain_schema(v) for v in schema]
    return schema


def cel_rules(schema: dict, path: tuple = ()) -> list[tuple[tuple, str, str]]:
    """(path to the object, rule, message) for every x-kubernetes-validations rule that
    judges one object alone; transition rules (``oldSelf``) are tried on the real API
    server (tests/operator_pkg/test_cluster.py)."""
    found = [(path, r["rule"], r.get("message", "")) for r in
             schema.get("x-kubernetes-validations", []) if "oldSelf" not in r["rule"]]
    for key, sub in (schema.get("properties") or {}).items():
        found += cel_rules(sub, (*path, key))
    return found


def _at(value: Any, path: tuple) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def validate(kind: str, obj: dict) -> list[str]:
    """Problems with ``obj`` (defaults applied first): schema errors and failed CEL rules
    as their messages; [] when valid."""
    schema = schema_of(kind)
    obj = apply_defaults(schema, copy.deepcopy(obj))
    errors = [e.message for e in jsonschema.Draft7Validator(_plain_schema(schema))
              .iter_errors(obj)]
    env = celpy.Environment()
    for path, rule, message in cel_rules(schema):
        target = _at(obj, path)
        if target is None:
            continue
        program = env.program(env.compile(rule))
        if not bool(program.evaluate({"self": celpy.json_to_cel(target)})):
            errors.append(message)
    return errors


def examples() -> list[dict]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def with_server_fields(obj: dict, namespace: str = "radiology") -> dict:
    """The object as the API server would hand it to the operator."""
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("namespace", namespace)
    obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}")
    obj["metadata"].setdefault("generation", 1)
    if obj["kind"] in CRDS:
        obj = apply_defaults(schema_of(obj["kind"]), obj)
    return obj
