"""Options of ``pulsar-bridge emulate``, kept beside the emulator they configure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge.emulator.server import run_emulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    parser.add_argument(
        "--endpoint",
        action="append",
        dest="endpoints",
        metavar="NAME",
        help="a serving endpoint to serve (repeatable; default fraud-model)",
    )
    parser.add_argument("--any-endpoint", action="store_true", help="serve every endpoint name")
    parser.add_argument("--client-id", help="OAuth service principal accepted by /oidc/v1/token")
    parser.add_argument("--client-secret", help="its secret")
    parser.add_argument("--pat", action="append", default=[], help="a static token to accept")
    parser.add_argument("--token-ttl", type=int, default=3600, help="expires_in of tokens (s)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without tokens")
    parser.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="a saved MLflow model (a directory with an MLmodel file) to serve on every "
        "endpoint instead of the built-in formula; needs the mlflow extra",
    )
    parser.add_argument(
        "--model-version",
        type=int,
        default=1,
        metavar="N",
        help="version in the served-model-name header '<model name>-N' (default 1)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        run_emulator(
            host=args.host,
            port=args.port,
            endpoints=tuple(args.endpoints or ("fraud-model",)),
            any_endpoint=args.any_endpoint,
            client_id=args.client_id,
            client_secret=args.client_secret,
            pat_tokens=tuple(args.pat),
            token_ttl_s=args.token_ttl,
            latency_ms=args.latency_ms,
            no_auth=args.no_auth,
            model=args.model,
            model_version=args.model_version,
            on_ready=lambda url: print(f"emulator listening on {url}", flush=True),
        )
    except ValueError as exc:
        print(f"pulsar-bridge emulate: {exc}", file=sys.stderr)
        return 2
    return 0
