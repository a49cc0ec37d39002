"""Operator benchmark: build and diff the objects of N XRayVision resources (every field
set), as one resync of a cluster with N installations does before any API call.

    .venv/bin/python bench/operator.py [--resources 200] [--repeat 5]

"build" is spec -> objects; "diff" compares them with the live objects (here the same
objects with server fields added, so nothing needs an apply, the steady state) and with
a changed spec (every Deployment needs one).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")  # operator_pkg.*; and bench/queue.py must not shadow `queue`

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from operator_pkg.crds import with_server_fields  # noqa: E402
from operator_pkg.test_validate import FULL  # noqa: E402
from xrayvision_operator.build import Resolved, build_xrayvision, covers  # noqa: E402

RESOLVED = Resolved(primary_url="http://m:8000", primary_model="mg",
                    secondary_url="http://s:8000", database_secret=("db", "url"),
                    service_monitors=True)


def diff(desired: list[dict], live: dict) -> list[dict]:
    """The desired objects that need an apply, as the reconciler decides it per object
    (``build.covers``): absent, or with a field that differs."""
    return [obj for obj in desired
            if not covers(live.get((obj["apiVersion"], obj["kind"],
                                    obj["metadata"]["name"])), obj)]


def resources(n: int) -> list[dict]:
    found = []
    for i in range(n):
        body = copy.deepcopy(FULL)
        body["metadata"] = {"name": f"site-{i}", "namespace": f"ns-{i % 20}"}
        found.append(with_server_fields(body))
    return found


def live_of(objects: list[dict]) -> dict:
    live = {}
    for obj in objects:
        stored = copy.deepcopy(obj)
        stored["metadata"].update(resourceVersion="1", uid="x", generation=1,
                                  managedFields=[{"manager": "xrayvision-operator"}])
        stored["status"] = {"observedGeneration": 1}
        live[(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])] = stored
    return live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    specs = resources(args.resources)
    lives = [live_of(build_xrayvision(s, RESOLVED)) for s in specs]
    changed = []
    for s in specs:
        c = copy.deepcopy(s)
        c["spec"]["severityThreshold"] = 9
        changed.append(c)
    rows = []
    for label, inputs in (("steady state", specs), ("spec changed", changed)):
        totals, applies, objects = [], 0, 0
        for _ in range(args.repeat):
            started = time.perf_counter()
            applies = objects = 0
            for spec, live in zip(inputs, lives, strict=True):
                built = build_xrayvision(spec, RESOLVED)
                objects += len(built)
                applies += len(diff(built, live))
            totals.append(time.perf_counter() - started)
        rows.append((label, objects, applies, statistics.median(totals), max(totals)))
    print(f"{args.resources} XRayVision resources, every field set; {args.repeat} runs")
    print(f"{'case':<14}{'objects':>9}{'to apply':>10}{'median s':>10}{'max s':>8}")
    for label, objects, applies, median, worst in rows:
        print(f"{label:<14}{objects:>9}{applies:>10}{median:>10.3f}{worst:>8.3f}")


if __name__ == "__main__":
    main()
