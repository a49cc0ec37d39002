"""``xrayvision-operator``: runs the kopf operator.

    xrayvision-operator [--namespace NS ...] [--metrics-port 9090] [--probe-port 8081]

Without ``--namespace`` it watches the whole cluster (the ClusterRole in
``deploy/rbac.yaml``); with it, only those namespaces (the namespaced Role).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterator
from typing import Any

import kopf
from kubernetes import client
from prometheus_client import start_http_server

from xrayvision_operator import probes
from xrayvision_operator.apply import (
    ABSENT_TTL,
    VERDICTS_URL,
    KubeApplier,
    fetch_verdicts,
    load_config,
    probe_models,
)
from xrayvision_operator.handlers import RESYNC_SECONDS, register, resync


class RetryForever:
    """kopf's request back-offs (seconds): 1, 2, 5, then 10 for as long as it takes;
    a new iterator per request."""

    def __iter__(self) -> Iterator[float]:
        yield from (1, 2, 5)
        while True:
            yield 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xrayvision-operator", description=__doc__)
    parser.add_argument("--namespace", action="append", default=[],
                        help="watch only this namespace (repeatable); default: all")
    parser.add_argument("--metrics-port", type=int, default=9090)
    parser.add_argument("--probe-port", type=int, default=8081,
                        help="port of /healthz (liveness) and /readyz (the API server "
                             "answers); 0: none")
    parser.add_argument("--resync-seconds", type=float, default=RESYNC_SECONDS,
                        help="how often every resource is reconciled even if nothing "
                             "changed (drift of unwatched kinds, model URL probes)")
    parser.add_argument("--verdicts-url", default=VERDICTS_URL,
                        help="where an XRayVision's known-answer probe verdicts are read "
                             "({name}, {namespace}: the XRayVision's), for ModelEndpoints' "
                             "ProbesPassing; default: its pods through its metrics Service")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        load_config()
    except Exception as exc:  # noqa: BLE001 - any failure here means "no cluster to talk to"
        print(f"xrayvision-operator: no Kubernetes configuration: {exc}. Run it in a pod "
              "with a ServiceAccount, or set KUBECONFIG.", file=sys.stderr)
        return 2
    if args.metrics_port:
        start_http_server(args.metrics_port)
    applier = KubeApplier(absent_ttl=min(ABSENT_TTL, args.resync_seconds))
    health = probes.ApiServerHealth(
        lambda: client.VersionApi(applier.api).get_code(_request_timeout=5))
    registry = kopf.OperatorRegistry()
    handlers = register(registry, applier, probe_models,
                        lambda xrv: fetch_verdicts(xrv, args.verdicts_url))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as the client above: the pod's ServiceAccount token
        # (re-read when kopf logs in again after a 401, as the kubelet rotates it), else
        # the kubeconfig.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.posting.loggers = True  # handler failures become Warning Events
        settings.execution.max_workers = 8
        # An API server that is away is waited for, however long: every request is
        # retried (readiness says so meanwhile) instead of the operator giving up.
        settings.networking.error_backoffs = RetryForever()
        loop = asyncio.get_running_loop()
        memo.tasks = [loop.create_task(resync(applier, handlers["refresh"], args.namespace,
                                              args.resync_seconds)),
                      loop.create_task(health.run())]
        memo.probes = await probes.serve(health, args.probe_port) if args.probe_port else None

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        for task in memo.tasks:
            task.cancel()
        if memo.probes is not None:
            await memo.probes.cleanup()

    asyncio.run(kopf.operator(
        registry=registry, clusterwide=not args.namespace, namespaces=args.namespace,
        memo=kopf.Memo(),
        standalone=True))  # one replica (Recreate); no peering CRDs needed
    return 0
