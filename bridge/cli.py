"""The ``pulsar-bridge`` command: parse arguments, then hand over to the app.

pulsar-bridge run     -c DIR     run the daemon until SIGTERM/SIGINT
pulsar-bridge check   -c DIR     validate a config directory; exit 1 listing every problem
                                 (--connect: then try the broker, tokens and endpoints)
pulsar-bridge status  -c DIR     per-route state and backlog, whether the daemon runs or not
pulsar-bridge emulate [...]      serve the local Databricks emulator
pulsar-bridge send | tail | replay   operator tools (bridge.tools)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from bridge import __version__
from bridge.config import Config, load_config
from bridge.config_load import SecretsRead
from bridge.errors import ConfigError
from bridge.redaction import Redactor

DEFAULT_CONFIG_DIR = Path("/etc/pulsar-bridge")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pulsar-bridge",
        description="Relay Pulsar events through Databricks Model Serving to result topics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    _config_arg(run)
    run.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help="override [observe] log_format (auto: console at a terminal, else JSON)",
    )
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="override [observe] log_level (the Pulsar client's own lines included)",
    )
    run.set_defaults(handler=_run)

    check = sub.add_parser("check", help="validate a config directory")
    _config_arg(check)
    check.add_argument(
        "--connect",
        action="store_true",
        help="then try the broker, each source topic, each workspace's token and each "
        "named endpoint (exists, READY); exit 1 if any fails",
    )
    check.add_argument(
        "--timeout", type=float, default=10.0, help="seconds each --connect check may take"
    )
    check.set_defaults(handler=_check)

    status = sub.add_parser(
        "status",
        help="show what the routes are doing and their backlog",
        description="Per route: the daemon's state and rates (its /status on [observe] "
        "http_bind) and the broker's backlog ([pulsar] admin_url or metrics_url). Reads no "
        "Databricks secret. Exit 3 when the daemon does not answer (the backlog is shown).",
    )
    _config_arg(status)
    status.add_argument("--json", action="store_true", help="one JSON document per refresh")
    status.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between the two samples (rates)"
    )
    status.set_defaults(handler=_status)

    emulate = sub.add_parser("emulate", help="serve the local Databricks emulator")
    from bridge.emulator.cli import add_arguments  # the emulator's options live with it

    add_arguments(emulate)
    emulate.set_defaults(handler=_emulate)

    from bridge.tools import add_commands  # send, tail, replay: their options live with them

    add_commands(sub, _config_arg, handler=_tool)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help=f"config directory with bridge.toml and routes/*.toml (default {DEFAULT_CONFIG_DIR})",
    )


def _load(directory: Path, redactor: Redactor, secrets: SecretsRead = "all") -> Config | None:
    """The config, or None after printing every problem (redacted: a problem may quote a
    secret, as ``env:<the secret>`` does). ``secrets``: which ones a command reads."""
    try:
        return load_config(directory, redactor=redactor, secrets=secrets)
    except ConfigError as exc:
        print(redactor.redact(f"invalid configuration in {directory}:"), file=sys.stderr)
        for problem in exc.problems:
            print(f"  {redactor.redact(str(problem))}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    from bridge.config import inspect_config
    from bridge.topics import normalise

    redactor = Redactor()
    # Everything run validates before connecting; warnings are shown even when it fails.
    report = inspect_config(args.config, redactor=redactor)
    for warning in report.warnings:
        print(redactor.redact(f"warning: {warning}"), file=sys.stderr)
    if report.config is None:
        count = len(report.problems)
        print(redactor.redact(f"{args.config}: {count} problem(s):"), file=sys.stderr)
        for problem in report.problems:
            print(f"  {redactor.redact(str(problem))}", file=sys.stderr)
        return 1
    config = report.config
    for route in config.routes:
        target = route.endpoint.url or f"endpoint {route.endpoint.name}"
        sources = ", ".join(normalise(t) for t in route.source.topics)
        line = (
            f"route {route.name}: {sources} -> {target} -> {normalise(route.result.topic)} "
            f"(DLQ {normalise(route.dead_letter_topic)})"
        )
        print(redactor.redact(line))
    print(redactor.redact(f"{args.config}: OK, {len(config.routes)} route(s)"))
    if not args.connect:
        return 0
    return _check_connect(config, redactor, args)


def _check_connect(config: Config, redactor: Redactor, args: argparse.Namespace) -> int:
    from bridge.client_log import NativeStdout
    from bridge.connect_check import client_lines_to_stderr, run_checks

    # The Pulsar client's own lines (a refused connection, retried) go to stderr: stdout
    # is one line per check.
    with NativeStdout():
        client_lines_to_stderr(redactor)
        checks = asyncio.run(run_checks(config, redactor, args.timeout))
    for check in checks:
        print(redactor.redact(check.line()))
    failed = sum(check.failed for check in checks)
    if failed:
        print(redactor.redact(f"{args.config}: {failed} of {len(checks)} check(s) FAILED"))
        return 1
    print(redactor.redact(f"{args.config}: connected, {len(checks)} check(s) ok"))
    return 0


def _run(args: argparse.Namespace) -> int:
    import structlog

    from bridge.app import Bridge
    from bridge.client_log import NativeStdout
    from bridge.observe import configure_logging
    from bridge.pulsar_io import set_client_log_level
    from bridge.tracing import install as install_tracing

    # The process's one redactor: the config's secrets register with it as they are
    # revealed, and every log line passes it.
    redactor = Redactor()
    config = _load(args.config, redactor)
    if config is None:
        return 1
    observe = config.bridge.observe
    level = args.log_level or observe.log_level
    # Every line on stdout is a log line: the Pulsar client's own included (client_log).
    # Tracing ([observe.tracing], restart to change) flushes its last spans on the way out.
    with NativeStdout(), install_tracing(observe.tracing):
        configure_logging(args.log_format or observe.log_format, level, redactor)
        set_client_log_level(level)
        try:
            code: int = asyncio.run(Bridge(config, redactor=redactor).run())
        except Exception:
            # A bug's traceback goes through the redacted log rather than raw to stderr.
            structlog.get_logger("bridge").exception("crashed")
            return 1
    return code


def _tool(args: argparse.Namespace) -> int:
    """send, tail, replay: load the config, then the tool's own ``run``."""
    from bridge.tools import run_tool

    # They talk to the broker only: its token is read, the Databricks secrets are not.
    config = _load(args.config, Redactor(), secrets="pulsar")
    if config is None:
        return 1
    return run_tool(config, args)


def _status(args: argparse.Namespace) -> int:
    from bridge.errors import BridgeError
    from bridge.status import show

    redactor = Redactor()
    # No secret is read: status runs where the service's credentials are not (an operator's
    # shell, without systemd's $CREDENTIALS_DIRECTORY); the admin API's token is read
    # when used.
    config = _load(args.config, redactor, secrets="none")
    if config is None:
        return 1
    try:
        code: int = asyncio.run(
            show(
                config,
                as_json=args.json,
                watch=args.watch,
                interval_s=args.interval,
                redact=lambda text: redactor.redact(text, multiline=True),
            )
        )
    except BridgeError as exc:
        print(redactor.redact(f"pulsar-bridge status: {exc}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return code


def _emulate(args: argparse.Namespace) -> int:
    from bridge.emulator.cli import run

    try:
        return run(args)
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, after shutdown
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
