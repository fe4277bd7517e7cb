"""Options of ``pulsar-bridge emulate``, kept beside the emulator they configure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge.emulator.federation import load_jwks
from bridge.emulator.server import build_state, run_emulator
from bridge.emulator.state import FederationPolicy


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
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="time to answer each invocation"
    )
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
    federation = parser.add_argument_group(
        "OIDC token federation", "trust an external identity provider's JWTs (token exchange)"
    )
    federation.add_argument("--federation-issuer", metavar="URL", help="the trusted iss")
    federation.add_argument(
        "--federation-audience",
        action="append",
        default=[],
        metavar="AUD",
        help="an accepted aud (repeatable; at least one)",
    )
    federation.add_argument(
        "--federation-jwks", type=Path, metavar="FILE", help="the issuer's public JWK Set (JSON)"
    )
    federation.add_argument("--federation-subject", metavar="SUB", help="the only sub accepted")
    federation.add_argument(
        "--federation-client-id",
        metavar="ID",
        help="make it a service principal's policy (workload identity federation)",
    )
    routing = parser.add_argument_group("route optimization")
    routing.add_argument(
        "--route-optimized",
        action="append",
        default=[],
        metavar="NAME",
        help="serve this endpoint on a data plane of its own port (repeatable)",
    )
    routing.add_argument(
        "--scoped-token-ttl", type=int, metavar="S", help="expires_in of endpoint-scoped tokens"
    )
    states = parser.add_argument_group(
        "endpoint states", "what a real endpoint goes through; durations count from start-up"
    )
    states.add_argument(
        "--capacity",
        type=int,
        metavar="N",
        help="invocations answered at once per endpoint; more get 429 at once (default no limit)",
    )
    states.add_argument(
        "--not-found-for", type=float, metavar="S", help="answer 404 for S seconds (also the GET)"
    )
    states.add_argument(
        "--forbidden-for", type=float, metavar="S", help="answer 403 for S seconds (also the GET)"
    )
    states.add_argument(
        "--scale-from-zero",
        type=float,
        metavar="S",
        help="scale up from zero for S seconds: invocations 503, the GET NOT_READY",
    )
    states.add_argument(
        "--reject-all",
        action="store_true",
        help="a new model signature: every invocation 400 'Model is missing inputs'",
    )
    states.add_argument(
        "--reject-all-for", type=float, metavar="S", help="the same for S seconds only"
    )


def _federation(args: argparse.Namespace) -> list[FederationPolicy]:
    """The federation policy the options describe, if any; ValueError when incomplete."""
    given = [args.federation_issuer, args.federation_audience, args.federation_jwks]
    if not any(given) and args.federation_subject is None and args.federation_client_id is None:
        return []
    if not all(given):
        raise ValueError(
            "federation needs --federation-issuer, --federation-audience and --federation-jwks"
        )
    return [
        FederationPolicy(
            issuer=args.federation_issuer,
            audiences=frozenset(args.federation_audience),
            jwks=load_jwks(args.federation_jwks),
            subject=args.federation_subject,
            client_id=args.federation_client_id,
        )
    ]


def endpoint_states(args: argparse.Namespace) -> dict[str, object]:
    """The ``/_emulator/faults`` patch the endpoint-state options describe."""
    options = {
        "capacity": args.capacity,
        "not_found_for_s": args.not_found_for,
        "forbidden_for_s": args.forbidden_for,
        "scale_from_zero_s": args.scale_from_zero,
        "reject_all_for_s": args.reject_all_for,
    }
    patch: dict[str, object] = {k: v for k, v in options.items() if v is not None}
    if args.reject_all:
        patch["reject_all"] = True
    return patch


def run(args: argparse.Namespace) -> int:
    try:
        state = build_state(
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
            federation=_federation(args),
            route_optimized=tuple(args.route_optimized),
            scoped_token_ttl_s=args.scoped_token_ttl,
            faults=endpoint_states(args),
        )
        run_emulator(
            state,
            host=args.host,
            port=args.port,
            on_ready=lambda url: print(f"emulator listening on {url}", flush=True),
        )
    except ValueError as exc:
        print(f"pulsar-bridge emulate: {exc}", file=sys.stderr)
        return 2
    return 0
