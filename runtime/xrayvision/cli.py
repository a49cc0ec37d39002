"""``xrayvision`` command: serve, migrate, import, probe, check-config, hash-password.

Exit codes: 0 success; 1 runtime failure; 2 bad configuration or usage (the message says
which key, which value and what was expected).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import logging
import os
import sys
import time
from pathlib import Path

from xrayvision import __version__
from xrayvision.config import (
    ROLES,
    ConfigError,
    Settings,
    effective_settings,
    load_settings,
    parse_roles,
)
from xrayvision.db.migrate import upgrade
from xrayvision.logs import setup_logging
from xrayvision.passwords import hash_password
from xrayvision.serve import StartupError, open_database, serve

log = logging.getLogger("xrayvision")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xrayvision", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"xrayvision {__version__}")
    parser.add_argument(
        "--config-dir", type=Path, default=None,
        help="folder with xrayvision.cfg and local.cfg (default: the current folder)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the chosen roles (default: all)")
    p.add_argument("--roles", help=f"comma-separated subset of {','.join(ROLES)}")
    p.add_argument("--migrate", action="store_true",
                   help="migrate an outdated database schema before starting")

    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to keep retrying an unreachable database (default 60)")

    p = sub.add_parser("import", help="import DICOM files and folders (recursively)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--migrate", action="store_true",
                   help="create or upgrade the database schema first (a new data folder)")

    p = sub.add_parser("probe", help="send the known-answer probe set to the model "
                                     "endpoints and print each answer's verdict")
    p.add_argument("--endpoint", choices=("primary", "secondary", "shadow"),
                   help="only this endpoint (default: every one configured)")

    sub.add_parser("check-config", help="print the effective settings, secrets masked")

    p = sub.add_parser("hash-password", help="print a scrypt hash for [users]")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config_dir)
    if getattr(args, "roles", None):
        settings = _with_roles(settings, args.roles)
    return settings


def _with_roles(settings: Settings, roles: str) -> Settings:
    try:
        parsed = parse_roles(roles)  # the same parser as [server] roles
    except ValueError as exc:
        raise ConfigError(f"invalid --roles {roles!r}: {exc}") from None
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, roles=parsed))


def cmd_check_config(settings: Settings) -> int:
    for warning in settings.warnings:
        print(f"# warning: {warning}")
    for section, rows in effective_settings(settings).items():
        print(f"[{section}]")
        for key, value in rows.items():
            print(f"{key} = {value}")
        print()
    return 0


def cmd_hash_password(stdin: bool) -> int:
    if stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif not sys.stdin.isatty():
        print("xrayvision: no terminal to ask for the password on; give it on standard "
              "input with --stdin (e.g. `xrayvision hash-password --stdin < file`)",
              file=sys.stderr)
        return 2
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            print("xrayvision: the passwords differ", file=sys.stderr)
            return 2
    if not password:
        print("xrayvision: empty password refused", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def cmd_migrate(settings: Settings, timeout: float) -> int:
    db = open_database(settings)
    deadline, delay = time.monotonic() + timeout, 0.5
    try:
        while True:
            try:
                db.ping()
                break
            except Exception as exc:  # noqa: BLE001
                if time.monotonic() + delay > deadline:
                    log.error("database unreachable; giving up", extra={"error": str(exc)[:200]})
                    return 1
                log.warning("database unreachable; retrying", extra={"retry_in": delay})
                time.sleep(delay)
                delay = min(delay * 2, 10)
        state = upgrade(db.engine)
        log.info("database migrated", extra={"schema": ",".join(state.head)})
        return 0
    finally:
        db.close()


async def _import(settings: Settings, paths: list[Path], migrate: bool = False) -> int:
    from xrayvision.db.migrate import schema_state
    from xrayvision.dicom.bulk import import_paths
    from xrayvision.events import make_bus
    from xrayvision.images import make_store

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"xrayvision: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    db = open_database(settings)
    try:
        state = await db.run_in_pool(schema_state, db.engine)
        if not state.is_current and migrate:
            state = await db.run_in_pool(upgrade, db.engine)
        if not state.is_current:
            print(f"xrayvision: {state.describe()}; or `xrayvision import --migrate`",
                  file=sys.stderr)
            return 2
        bus = make_bus(db.url)
        await bus.start()
        try:
            store = make_store(settings.images.backend, settings.images_path, db)
            summary = await import_paths(settings, db, store, bus, paths)
        finally:
            await bus.close()
    finally:
        await asyncio.to_thread(db.close)
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0


async def _probe(settings: Settings, only: str | None) -> int:
    """Each configured endpoint (the shadow too) through the probe set, as the relay's
    prober judges it, with progress; 0 when every one passes."""
    import aiohttp

    from xrayvision.ai.client import ModelClient
    from xrayvision.ai.probes import ProbeSetError
    from xrayvision.ai.prompts import PromptError, load_prompts
    from xrayvision.runtime import endpoints, probe_runner, shadow_endpoint

    live = endpoints(settings)
    shadow = shadow_endpoint(settings)
    targets = [e for e in [*live, *([shadow] if shadow else [])] if only in (None, e.name)]
    if not targets:
        print(f"xrayvision: no {only} endpoint is configured", file=sys.stderr)
        return 2
    async with aiohttp.ClientSession() as http:
        client = ModelClient(live, http, max_attempts=1)
        try:
            runner = probe_runner(settings, client, load_prompts(settings.ai.prompts_dir))
        except (ProbeSetError, PromptError) as exc:
            print(f"xrayvision: {exc}", file=sys.stderr)
            return 2
        probes = runner.probe_set
        print(f"probe set {probes.folder} ({probes.version}): {len(probes.cases)} cases, "
              f"budget {settings.probes.latency_budget:g} s each")
        passed = True
        for endpoint in targets:
            print(f"\n{endpoint.name} {endpoint.url} ({endpoint.model}) ...", flush=True)
            verdict = await runner.probe_endpoint(endpoint)
            for case in verdict.cases:
                band = next(c.severity for c in probes.cases if c.name == case.name)
                print(f"  {'pass' if case.passed else 'FAIL'}  {case.name:<40} severity "
                      f"{case.severity:>2} (expected {band[0]}-{band[1]})  "
                      f"{case.seconds:6.1f} s  {'; '.join(case.problems)}")
            outcome = {True: "passes", False: "FAILS: degraded while it answers so",
                       None: f"not reachable: {verdict.reason}"}[verdict.passed]
            print(f"  {endpoint.name} {outcome}", flush=True)
            passed = passed and verdict.passed is True
    return 0 if passed else 1


def ensure_tmpdir(environ=os.environ) -> None:
    """Creates the folder TMPDIR names before anything asks tempfile for it (tempfile
    quietly falls back to /tmp when it is missing). The operator puts ingest's on the
    image volume, so that received files are renamed into the store, not copied."""
    tmpdir = environ.get("TMPDIR")
    if tmpdir:
        with contextlib.suppress(OSError):  # unusable: tempfile's fallback applies
            Path(tmpdir).mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    ensure_tmpdir()
    args = _parser().parse_args(argv)
    if args.command == "hash-password":
        return cmd_hash_password(args.stdin)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"xrayvision: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.server.log_level, settings.server.log_format)
    if args.command == "check-config":
        return cmd_check_config(settings)
    if args.command == "migrate":
        return cmd_migrate(settings, args.timeout)
    if args.command == "import":
        return asyncio.run(_import(settings, args.paths, args.migrate))
    if args.command == "probe":
        return asyncio.run(_probe(settings, args.endpoint))
    try:
        return asyncio.run(serve(settings, migrate=args.migrate))
    except StartupError as exc:
        print(f"xrayvision: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"xrayvision: cannot start: {exc}", file=sys.stderr)
        return 1
