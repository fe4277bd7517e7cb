#!/usr/bin/env bash
# Build the container image from this repository with Debian's own tools, then smoke-run it.
#
#   scripts/build-image.sh            # base image (cached), image, smoke run
#   scripts/build-image.sh --no-smoke # build only
#   IMAGE=registry.example.com/pulsar-serving-bridge:1.2 scripts/build-image.sh
#   FROM_WORKTREE=1 scripts/build-image.sh   # uncommitted changes too (default: HEAD)
#
# No image registry is needed: the base is a root filesystem made by debootstrap from the
# Debian mirror this machine's apt already uses, imported with `podman import`. What is
# installed with apt-get here is installed by this script, so a fresh machine (or CI) runs
# it as it is. Needs root (apt-get, debootstrap, rootful podman). The base image is kept
# once built: `podman rmi localhost/pulsar-bridge-base:bookworm` to take Debian's updates.
#
# The smoke run proves, with the image's own entrypoint and the Kubernetes-like settings
# (--read-only, --user 10001, --cap-drop ALL, no-new-privileges):
#   1. `pulsar-bridge --version` runs as uid 10001;
#   2. the demo (examples/demo.py: embedded broker, Databricks emulator, the bridge) passes;
#   3. the daemon as PID 1, configured from a mounted directory with its client secret in a
#      mounted file, gets ready, relays events, and on SIGTERM drains and exits 0.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SMOKE=1
[[ "${1:-}" == "--no-smoke" ]] && SMOKE=0

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n1)
IMAGE=${IMAGE:-localhost/pulsar-serving-bridge:$VERSION}
SUITE=bookworm                     # Python 3.11, the project's minimum
BASE_IMAGE=localhost/pulsar-bridge-base:$SUITE
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/pulsar-serving-bridge/image
mkdir -p "$CACHE"

log() { printf '[build-image %(%H:%M:%S)T] %s\n' -1 "$*"; }

# --------------------------------------------------------------------------- tools
install_tools() {
    local missing=()
    for cmd in podman runc debootstrap; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Sandboxes and CI runners often forbid raising rlimits: podman's default ulimits make
    # every container fail to start there, and crun cannot run at all (runc can).
    printf '[containers]\ndefault_ulimits = []\n' >"$CACHE/containers.conf"
    export CONTAINERS_CONF=$CACHE/containers.conf
}

pod() { podman --runtime runc "$@"; }

# The first non-security Debian mirror apt is configured with (deb822 or one-line format).
debian_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } \
        | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
            -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\).*/\2/p' \
        | { grep -v -e security -e '^$' || true; } | head -n1
}

# --------------------------------------------------------------------------- base image
build_base() {
    if pod image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE is cached"
        return
    fi
    local mirror rootfs
    mirror=$(debian_mirror)
    [[ -n "$mirror" ]] || { echo "no Debian mirror found in apt's sources" >&2; exit 1; }
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    log "debootstrap $SUITE (minbase + python3) from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$mirror" \
        >"$CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$CACHE/base.tar" .
    rm -rf "$rootfs"
    pod import "$CACHE/base.tar" "$BASE_IMAGE" >/dev/null
    rm -f "$CACHE/base.tar"
    log "base image $BASE_IMAGE imported"
}

# --------------------------------------------------------------------------- the image
build_image() {
    local context
    context=$(mktemp -d)
    # Only what the image needs: the committed tree (what a clone builds), or with
    # FROM_WORKTREE=1 the work tree as it is, uncommitted changes included.
    if [[ "${FROM_WORKTREE:-0}" == 1 ]] || ! git -C "$ROOT" rev-parse -q HEAD >/dev/null 2>&1; then
        tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' \
            -cf - pyproject.toml README.md bridge examples | tar -C "$context" -xf -
        log "building $IMAGE from the work tree"
    else
        git -C "$ROOT" archive HEAD pyproject.toml README.md bridge examples \
            | tar -C "$context" -xf -
        log "building $IMAGE from commit $(git -C "$ROOT" rev-parse --short HEAD)"
    fi
    # pip in the build trusts what this machine trusts (see the Containerfile).
    local ca_bundle=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
    pod build --network host --secret "id=ca-bundle,src=$ca_bundle" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "VERSION=$VERSION" -f "$ROOT/deploy/container/Containerfile" \
        -t "$IMAGE" "$context"
    rm -rf "$context"
}

# --------------------------------------------------------------------------- smoke run
RUNNING=()
WORK=""
cleanup() {
    for name in "${RUNNING[@]}"; do pod rm -f -t 0 "$name" >/dev/null 2>&1 || true; done
    [[ -n "$WORK" ]] && rm -rf "$WORK"
}

# How the chart runs it: read-only root with /tmp the only writable place (podman would add
# /run and /var/tmp too), non-root, no capabilities. Host networking because the sandbox
# this was written in has no container networking; everything binds loopback.
run_locked() {
    pod run --network host --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,mode=1777 \
        --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges "$@"
}

free_port() {
    pod run --rm --network host --entrypoint python "$IMAGE" -c \
        'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() {  # $1 = port; bounded: 90 tries, one second apart
    pod run --rm -i --network host --entrypoint python "$IMAGE" - "$1" <<'EOF'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
for _ in range(90):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
sys.exit(f"{url} never answered 200")
EOF
}

smoke() {
    trap cleanup EXIT
    WORK=$(mktemp -d)
    local started=$SECONDS

    log "smoke 1/3: --version as uid 10001, nothing writable but /tmp"
    run_locked --rm "$IMAGE" --version
    [[ "$(run_locked --rm --entrypoint id "$IMAGE" -u)" == 10001 ]]
    if run_locked --rm --entrypoint touch "$IMAGE" /opt/pulsar-bridge/x /run/x 2>/dev/null; then
        echo "the image's root filesystem is writable by its user" >&2
        exit 1
    fi
    run_locked --rm --entrypoint touch "$IMAGE" /tmp/x

    log "smoke 2/3: the demo inside the image"
    run_locked --rm --entrypoint python "$IMAGE" /opt/pulsar-bridge/examples/demo.py \
        --events 2000

    log "smoke 3/3: the daemon as PID 1 from a mounted config and a mounted secret file"
    local broker_port emulator_port http_port suffix=$$
    broker_port=$(free_port)
    emulator_port=$(free_port)
    http_port=$(free_port)
    RUNNING+=("psb-broker-$suffix" "psb-emulator-$suffix" "psb-bridge-$suffix")
    run_locked -d --name "psb-broker-$suffix" --entrypoint python "$IMAGE" -c "
import os, pathlib
from pulsar_lite.binary_finder import find_pulsar_lite_binary
home = pathlib.Path('/tmp/broker'); home.mkdir()
(home / 'pulsar-lite.toml').write_text('[metrics]\nenabled = false\n')
binary = find_pulsar_lite_binary()
os.execv(binary, [binary, '--addr', '127.0.0.1:$broker_port', '--db-path', str(home / 'db')])
" >/dev/null
    run_locked -d --name "psb-emulator-$suffix" "$IMAGE" emulate --port "$emulator_port" \
        --client-id smoke-sp --client-secret smoke-secret --endpoint fraud-model >/dev/null

    mkdir -p "$WORK/config/routes" "$WORK/secrets"
    cat >"$WORK/config/bridge.toml" <<EOF
[pulsar]
service_url = "pulsar://127.0.0.1:$broker_port"

[databricks]
host = "http://127.0.0.1:$emulator_port"
auth_type = "oauth-m2m"
client_id = "smoke-sp"
client_secret = "file:/run/secrets/pulsar-bridge/client-secret"

[observe]
http_bind = "127.0.0.1:$http_port"
log_format = "json"

[daemon]
drain_grace_s = 10
EOF
    cp "$ROOT/examples/fraud/routes/fraud.toml" "$WORK/config/routes/"
    printf 'smoke-secret\n' >"$WORK/secrets/client-secret"
    chmod -R a+rX "$WORK/config"
    chown 10001:10001 "$WORK/secrets" "$WORK/secrets/client-secret"
    chmod 0500 "$WORK/secrets"
    chmod 0400 "$WORK/secrets/client-secret"

    run_locked -d --name "psb-bridge-$suffix" \
        -v "$WORK/config:/etc/pulsar-bridge:ro" \
        -v "$WORK/secrets:/run/secrets/pulsar-bridge:ro" "$IMAGE" >/dev/null
    wait_ready "$http_port"
    local pid1
    pid1=$(pod exec "psb-bridge-$suffix" python -c \
        'print(open("/proc/1/cmdline").read().replace("\0", " ").strip())')
    log "PID 1 is: $pid1"
    [[ "$pid1" == *"pulsar-bridge run -c /etc/pulsar-bridge" ]]

    pod run --rm -i --network host --entrypoint python "$IMAGE" - "$broker_port" <<'EOF'
import json, sys, pulsar
client = pulsar.Client(f"pulsar://127.0.0.1:{sys.argv[1]}",
                       logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
results = client.subscribe("persistent://public/default/fraud-scores", "smoke",
                           initial_position=pulsar.InitialPosition.Earliest)
producer = client.create_producer("persistent://public/default/transactions")
for i in range(200):
    event = {"id": f"tx-{i}", "card": "4111", "amount": 12.5, "merchant_risk": 0.1,
             "hour": 3, "distance_km": 1.0}
    producer.send(json.dumps(event).encode())
seen = set()
while len(seen) < 200:
    message = results.receive(timeout_millis=60_000)  # raises on a stall: the smoke fails
    seen.add(json.loads(message.data())["id"])
    results.acknowledge(message)
print("200 events relayed by the daemon in the image")
client.close()
EOF

    local stop_started=$SECONDS code
    pod stop -t 60 "psb-bridge-$suffix" >/dev/null
    code=$(pod inspect "psb-bridge-$suffix" --format '{{.State.ExitCode}}')
    log "SIGTERM -> exit $code after $((SECONDS - stop_started)) s (podman would SIGKILL at 60 s)"
    pod logs "psb-bridge-$suffix" >"$WORK/bridge.log" 2>&1
    [[ "$code" == 0 ]] || { tail -n 30 "$WORK/bridge.log" >&2; exit 1; }
    grep -q '"event": *"stopped"' "$WORK/bridge.log" \
        || { echo "no 'stopped' line in the daemon's log" >&2; tail -n 30 "$WORK/bridge.log" >&2; exit 1; }
    log "smoke run passed in $((SECONDS - started)) s"
}

install_tools
t0=$SECONDS
build_base
t1=$SECONDS
build_image
t2=$SECONDS
log "base $((t1 - t0)) s, image $((t2 - t1)) s; $(pod image inspect "$IMAGE" --format '{{.Size}}') bytes"
((SMOKE)) && smoke
log "done: $IMAGE"
