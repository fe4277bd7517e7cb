#!/usr/bin/env bash
# Fetch and run a real Apache Pulsar standalone broker on loopback, for tests.
#
#   scripts/apache-pulsar.sh fetch                     download + unpack once, print the install dir
#   scripts/apache-pulsar.sh check                     exit 0 when a usable JDK and Maven (or a cached install) exist
#   scripts/apache-pulsar.sh start DATADIR [--tls] [--auth-token]
#   scripts/apache-pulsar.sh stop DATADIR              idempotent
#   scripts/apache-pulsar.sh token DATADIR SUBJECT     print a token for a role (after start --auth-token)
#
# `start` prints KEY=VALUE lines (also written to DATADIR/broker.env) that callers parse:
#   PULSAR_SERVICE_URL, PULSAR_ADMIN_URL, and with --tls PULSAR_SERVICE_URL_TLS, PULSAR_ADMIN_URL_TLS,
#   PULSAR_CA_CERT; with --auth-token PULSAR_ADMIN_TOKEN_FILE.
#
# Environment (all optional):
#   PULSAR_VERSION        Pulsar release (default 4.0.8: the newest 4.0.x LTS Maven Central serves
#                         as pulsar-server-distribution)
#   PULSAR_CACHE_DIR      where the unpacked distribution lives (default ~/.cache/pulsar-serving-bridge)
#   PULSAR_MAVEN_REPO     Maven local repository to download through (default: Maven's own, ~/.m2)
#   PULSAR_JAVA_HOME      JDK to run the broker with (default: the newest JDK >= 21 found)
#   PULSAR_PORT           binary protocol port (default 6651; 6650 is the usual one, left to others)
#   PULSAR_WEB_PORT       HTTP admin port (default 8081; 8080 is pulsar-lite's metrics port)
#   PULSAR_TLS_PORT       TLS binary port with --tls (default 6652)
#   PULSAR_WEB_TLS_PORT   HTTPS admin port with --tls (default 8444)
#   PULSAR_MEM            JVM memory flags (default "-Xms512m -Xmx1g -XX:MaxDirectMemorySize=1g")
#   PULSAR_GC             JVM GC flags (default "-XX:+UseG1GC -XX:+PerfDisableSharedMem")
#   PULSAR_START_TIMEOUT  seconds to wait for readiness (default 180)
#   PULSAR_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 30)
set -euo pipefail

readonly PULSAR_VERSION="${PULSAR_VERSION:-4.0.8}"
readonly CACHE_DIR="${PULSAR_CACHE_DIR:-$HOME/.cache/pulsar-serving-bridge}"
readonly INSTALL_DIR="$CACHE_DIR/apache-pulsar-$PULSAR_VERSION"
# Pulsar 3.3+ and 4.x need Java 21 or newer.
readonly MIN_JAVA=21
readonly HOST=127.0.0.1

log() { echo "apache-pulsar: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- Java --------------------------------------------------------------------------------------

# Major version of the java binary under JDK home $1 (e.g. 25), or nothing.
java_major() {
    local home="$1" out
    [[ -x "$home/bin/java" ]] || return 0
    # Captured whole, not piped into grep: with pipefail an early-exiting grep could fail it.
    out="$("$home/bin/java" -version 2>&1)" || return 0
    if [[ "$out" =~ version\ \"1\.([0-9]+) ]]; then
        echo "${BASH_REMATCH[1]}"
    elif [[ "$out" =~ version\ \"([0-9]+) ]]; then
        echo "${BASH_REMATCH[1]}"
    fi
}

# Print the JDK home to run Pulsar with: PULSAR_JAVA_HOME if set, otherwise the newest JDK >= 21
# among JAVA_HOME and /usr/lib/jvm/* (the machine's default java is 17, too old for Pulsar 4).
find_java_home() {
    if [[ -n "${PULSAR_JAVA_HOME:-}" ]]; then
        local forced
        forced="$(java_major "$PULSAR_JAVA_HOME")"
        [[ -n "$forced" ]] && ((forced >= MIN_JAVA)) || return 1
        echo "$PULSAR_JAVA_HOME"
        return 0
    fi
    local best="" best_major=0 home major
    for home in ${JAVA_HOME:+"$JAVA_HOME"} /usr/lib/jvm/*; do
        [[ -d "$home" ]] || continue
        major="$(java_major "$home")"
        if [[ -n "$major" ]] && ((major >= MIN_JAVA && major > best_major)); then
            best="$home"
            best_major="$major"
        fi
    done
    [[ -n "$best" ]] || return 1
    echo "$best"
}

# --- fetch -------------------------------------------------------------------------------------

is_installed() { [[ -f "$INSTALL_DIR/.fetch-complete" ]]; }

# Download org.apache.pulsar:pulsar-server-distribution:<v>:tar.gz:bin through Maven (the only
# way out to the internet here) and unpack it once into the cache, outside the repository.
cmd_fetch() {
    if is_installed; then
        echo "$INSTALL_DIR"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (needed to download Apache Pulsar)"
    mkdir -p "$CACHE_DIR"
    # Parallel test workers may fetch at once: serialize on a lock, then re-check.
    exec 9>"$CACHE_DIR/.fetch.lock"
    flock 9
    if is_installed; then
        echo "$INSTALL_DIR"
        return 0
    fi
    local tmp
    tmp="$(mktemp -d "$CACHE_DIR/.fetch.XXXXXX")"
    # shellcheck disable=SC2064 # expand $tmp now: it is local.
    trap "rm -rf '$tmp'" EXIT
    local artifact="org.apache.pulsar:pulsar-server-distribution:$PULSAR_VERSION:tar.gz:bin"
    local mvn_args=(-q -B)
    [[ -n "${PULSAR_MAVEN_REPO:-}" ]] && mvn_args+=("-Dmaven.repo.local=$PULSAR_MAVEN_REPO")
    log "downloading $artifact with Maven"
    # Run Maven from the empty temp dir so it never picks up a project pom.
    if ! (cd "$tmp" && mvn "${mvn_args[@]}" dependency:copy -Dartifact="$artifact" \
        -DoutputDirectory="$tmp" -Dmdep.overWriteReleases=true) >"$tmp/mvn.log" 2>&1; then
        cat "$tmp/mvn.log" >&2
        die "Maven could not fetch $artifact"
    fi
    log "unpacking"
    tar -xzf "$tmp/pulsar-server-distribution-$PULSAR_VERSION-bin.tar.gz" -C "$tmp"
    rm -rf "$INSTALL_DIR"
    # Unpack in the temp dir and move into place, so a half-unpacked tree is never "installed".
    mv "$tmp/apache-pulsar-$PULSAR_VERSION" "$INSTALL_DIR"
    touch "$INSTALL_DIR/.fetch-complete"
    rm -rf "$tmp"
    trap - EXIT
    echo "$INSTALL_DIR"
}

cmd_check() {
    find_java_home >/dev/null || {
        log "no JDK >= $MIN_JAVA found (set PULSAR_JAVA_HOME)"
        return 1
    }
    is_installed || command -v mvn >/dev/null || {
        log "Apache Pulsar not cached and mvn not found"
        return 1
    }
}

# --- configuration -----------------------------------------------------------------------------

# set_conf FILE KEY VALUE: replace KEY's line in a Java properties file, or append it.
# (The shipped standalone.conf has no final newline, so a plain `>>` would glue lines together.)
set_conf() {
    local file="$1" key="$2" value="$3"
    awk -v k="$key" -v v="$value" '
        BEGIN { done = 0 }
        index($0, k "=") == 1 { print k "=" v; done = 1; next }
        { print }
        END { if (!done) print k "=" v }
    ' "$file" >"$file.tmp"
    mv "$file.tmp" "$file"
}

write_conf() {
    local datadir="$1" conf="$1/standalone.conf"
    cp "$INSTALL_DIR/conf/standalone.conf" "$conf"
    # Loopback only, on ports away from the defaults (6650/8080) to avoid clashes.
    set_conf "$conf" bindAddress "$HOST"
    set_conf "$conf" advertisedAddress "$HOST"
    set_conf "$conf" brokerServicePort "$PORT"
    set_conf "$conf" webServicePort "$WEB_PORT"
    # One bookie: every ledger must fit on it.
    set_conf "$conf" managedLedgerDefaultEnsembleSize 1
    set_conf "$conf" managedLedgerDefaultWriteQuorum 1
    set_conf "$conf" managedLedgerDefaultAckQuorum 1
    set_conf "$conf" functionsWorkerEnabled false
    # The embedded bookie reads this file too. Its port is picked free by Pulsar 4's BKCluster
    # (not 3181); bind it to loopback rather than 0.0.0.0. No bookie HTTP/Prometheus server.
    set_conf "$conf" listeningInterface lo
    set_conf "$conf" httpServerEnabled false
    # Keep anything written through relative or /tmp paths inside DATADIR.
    set_conf "$conf" narExtractionDirectory "$datadir/nar"
    set_conf "$conf" statusFilePath "$datadir/status"
    # Tests need no 60 s wait before the first stats or load reports.
    set_conf "$conf" statsUpdateInitialDelayInSecs 5
    set_conf "$conf" statsUpdateFrequencyInSecs 5
}

# Self-signed CA plus a server certificate for 127.0.0.1/localhost, PEM, key in PKCS#8 (Pulsar's
# expected format). Reused when present so a restart keeps clients' trust.
make_tls_material() {
    local dir="$1/tls"
    mkdir -p "$dir"
    [[ -f "$dir/server.cert.pem" ]] && return 0
    log "generating TLS CA and server certificate"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/ca.key.pem" 2>/dev/null
    openssl req -x509 -new -key "$dir/ca.key.pem" -sha256 -days 3650 \
        -subj "/CN=pulsar-serving-bridge test CA" -out "$dir/ca.cert.pem"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/server.key.pem" 2>/dev/null
    openssl req -new -key "$dir/server.key.pem" -subj "/CN=localhost" -out "$dir/server.csr.pem"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr.pem" -CA "$dir/ca.cert.pem" -CAkey "$dir/ca.key.pem" \
        -CAcreateserial -sha256 -days 3650 -extfile "$dir/server.ext" -out "$dir/server.cert.pem" \
        2>/dev/null
}

enable_tls() {
    local datadir="$1" conf="$1/standalone.conf" dir="$1/tls"
    make_tls_material "$datadir"
    set_conf "$conf" brokerServicePortTls "$TLS_PORT"
    set_conf "$conf" webServicePortTls "$WEB_TLS_PORT"
    set_conf "$conf" tlsCertificateFilePath "$dir/server.cert.pem"
    set_conf "$conf" tlsKeyFilePath "$dir/server.key.pem"
    set_conf "$conf" tlsTrustCertsFilePath "$dir/ca.cert.pem"
    # The plain ports stay open: readiness is polled on plain HTTP and the broker's internal
    # client keeps using the plain binary port.
}

# Run one of Pulsar's CLI tools (a short-lived JVM) with a small heap and no pre-touching,
# which bin/pulsar's defaults (2 GB, AlwaysPreTouch) would make take seconds.
pulsar_tool() {
    JAVA_HOME="$JAVA_HOME_SEL" PULSAR_MEM="-Xmx128m" PULSAR_GC="-XX:+UseSerialGC" PULSAR_GC_LOG=" " \
        PULSAR_LOG_DIR="$TOOL_LOG_DIR" "$INSTALL_DIR/bin/pulsar" "$@"
}

enable_auth_token() {
    local datadir="$1" conf="$1/standalone.conf"
    if [[ ! -f "$datadir/secret.key" ]]; then
        log "generating token secret key and admin token"
        pulsar_tool tokens create-secret-key --output "$datadir/secret.key" >/dev/null
    fi
    if [[ ! -s "$datadir/admin.token" ]]; then
        pulsar_tool tokens create --secret-key "file://$datadir/secret.key" --subject admin \
            >"$datadir/admin.token.tmp"
        mv "$datadir/admin.token.tmp" "$datadir/admin.token"
    fi
    set_conf "$conf" authenticationEnabled true
    set_conf "$conf" authenticationProviders \
        org.apache.pulsar.broker.authentication.AuthenticationProviderToken
    set_conf "$conf" authorizationEnabled true
    set_conf "$conf" superUserRoles admin
    set_conf "$conf" tokenSecretKey "file://$datadir/secret.key"
    # The broker's internal client (namespace setup, system topics) authenticates as admin.
    set_conf "$conf" brokerClientAuthenticationPlugin \
        org.apache.pulsar.client.impl.auth.AuthenticationToken
    set_conf "$conf" brokerClientAuthenticationParameters "file://$datadir/admin.token"
}

# --- process handling --------------------------------------------------------------------------

pid_file() { echo "$1/pulsar.pid"; }

# Print the pid recorded for DATADIR if that process is alive and is a Pulsar standalone (a
# recycled pid must never be signalled).
running_pid() {
    local file pid
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q PulsarStandaloneStarter || return 1
    echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# HTTP status of GET admin path $1 on the plain web port ("000" when nothing answers).
admin_status() {
    local headers=()
    [[ -n "$ADMIN_TOKEN" ]] && headers=(-H "Authorization: Bearer $ADMIN_TOKEN")
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${headers[@]}" \
        "http://$HOST:$WEB_PORT$1" || true
}

# Ready = the broker answers its health check (which round-trips a message through a topic)
# and the standalone's initial namespace public/default exists.
wait_ready() {
    local datadir="$1" pid="$2" timeout="${PULSAR_START_TIMEOUT:-180}" start now
    start="$(date +%s)"
    while true; do
        kill -0 "$pid" 2>/dev/null || fail_start "$datadir" "broker exited during startup"
        if [[ "$(admin_status /admin/v2/namespaces/public/default)" == 200 &&
            "$(admin_status /admin/v2/brokers/health)" == 200 ]]; then
            return 0
        fi
        now="$(date +%s)"
        ((now - start < timeout)) || fail_start "$datadir" "not ready after ${timeout}s"
        sleep 0.5
    done
}

fail_start() {
    local datadir="$1"
    log "error: $2; last log lines ($datadir/logs/pulsar-standalone.log):"
    tail -n 60 "$datadir/logs/pulsar-standalone.log" >&2 || true
    cmd_stop "$datadir" >/dev/null 2>&1 || true
    exit 1
}

cmd_start() {
    local datadir="" tls=false auth=false
    while (($#)); do
        case "$1" in
        --tls) tls=true ;;
        --auth-token) auth=true ;;
        -*) die "unknown start option: $1" ;;
        *)
            [[ -z "$datadir" ]] || die "unexpected argument: $1"
            datadir="$1"
            ;;
        esac
        shift
    done
    [[ -n "$datadir" ]] || die "usage: $0 start DATADIR [--tls] [--auth-token]"
    mkdir -p "$datadir"
    datadir="$(cd "$datadir" && pwd)"
    if running_pid "$datadir" >/dev/null; then
        die "a broker from $datadir is already running (pid $(running_pid "$datadir"))"
    fi

    PORT="${PULSAR_PORT:-6651}"
    WEB_PORT="${PULSAR_WEB_PORT:-8081}"
    TLS_PORT="${PULSAR_TLS_PORT:-6652}"
    WEB_TLS_PORT="${PULSAR_WEB_TLS_PORT:-8444}"
    ADMIN_TOKEN=""
    # Refuse taken ports: otherwise readiness polling could be answered by someone else's broker.
    local ports=("$PORT" "$WEB_PORT") p
    $tls && ports+=("$TLS_PORT" "$WEB_TLS_PORT")
    for p in "${ports[@]}"; do
        ! port_in_use "$p" || die "port $p on $HOST is already in use"
    done

    # In a subshell, so the fetch lock's file descriptor is not inherited by the broker.
    (cmd_fetch) >/dev/null
    JAVA_HOME_SEL="$(find_java_home)" || die "no JDK >= $MIN_JAVA found (set PULSAR_JAVA_HOME)"
    mkdir -p "$datadir/logs" "$datadir/data" "$datadir/tmp"
    TOOL_LOG_DIR="$datadir/logs/tools"

    write_conf "$datadir"
    $tls && enable_tls "$datadir"
    if $auth; then
        enable_auth_token "$datadir"
        ADMIN_TOKEN="$(cat "$datadir/admin.token")"
    fi

    log "starting Apache Pulsar $PULSAR_VERSION (java $(java_major "$JAVA_HOME_SEL")) in $datadir"
    # -nfw/-nss: no functions worker, no stream storage (and so no port 4181). Metadata lives in
    # RocksDB (no ZooKeeper port). stdin/stdout/stderr are detached so a caller capturing this
    # script's output (subprocess.run) does not wait for the broker to exit. The working directory
    # is DATADIR so relative paths in the default config land there; java.io.tmpdir too.
    (
        cd "$datadir"
        export JAVA_HOME="$JAVA_HOME_SEL"
        export PULSAR_STANDALONE_CONF="$datadir/standalone.conf"
        export PULSAR_LOG_DIR="$datadir/logs"
        # Log to the console appender only; its output is the log file below. (The default file
        # appender buffers and can lose the tail we want to show on a failed start.)
        export PULSAR_LOG_APPENDER=Console
        export PULSAR_MEM="${PULSAR_MEM:--Xms512m -Xmx1g -XX:MaxDirectMemorySize=1g}"
        # G1 without bin/pulsar's AlwaysPreTouch+ZGC: ~640 MB RSS instead of ~780 MB here.
        export PULSAR_GC="${PULSAR_GC:--XX:+UseG1GC -XX:+PerfDisableSharedMem}"
        export PULSAR_EXTRA_OPTS="-Djava.io.tmpdir=$datadir/tmp -Dpulsar.allocator.exit_on_oom=true"
        PULSAR_EXTRA_OPTS+=" -Dio.netty.recycler.maxCapacityPerThread=4096"
        exec setsid "$INSTALL_DIR/bin/pulsar" standalone -nfw -nss \
            --metadata-dir "$datadir/data/metadata" \
            --bookkeeper-dir "$datadir/data/bookkeeper" \
            </dev/null >>"$datadir/logs/pulsar-standalone.log" 2>&1
    ) &
    local pid=$!
    echo "$pid" >"$(pid_file "$datadir")"
    wait_ready "$datadir" "$pid"

    {
        echo "PULSAR_SERVICE_URL=pulsar://$HOST:$PORT"
        echo "PULSAR_ADMIN_URL=http://$HOST:$WEB_PORT"
        if $tls; then
            echo "PULSAR_SERVICE_URL_TLS=pulsar+ssl://$HOST:$TLS_PORT"
            echo "PULSAR_ADMIN_URL_TLS=https://$HOST:$WEB_TLS_PORT"
            echo "PULSAR_CA_CERT=$datadir/tls/ca.cert.pem"
        fi
        $auth && echo "PULSAR_ADMIN_TOKEN_FILE=$datadir/admin.token"
        echo "PULSAR_PID=$pid"
    } | tee "$datadir/broker.env"
    log "ready"
}

cmd_stop() {
    local datadir="${1:?usage: $0 stop DATADIR}" pid timeout="${PULSAR_STOP_TIMEOUT:-30}" i
    if pid="$(running_pid "$datadir")"; then
        # SIGTERM lets the broker close ledgers and flush RocksDB, so a restart finds its data.
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < timeout * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "broker $pid still alive after ${timeout}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
        log "stopped broker $pid"
    fi
    rm -f "$(pid_file "$datadir")"
}

cmd_token() {
    local datadir="${1:?usage: $0 token DATADIR SUBJECT}" subject="${2:?usage: $0 token DATADIR SUBJECT}"
    [[ -f "$datadir/secret.key" ]] || die "$datadir has no secret.key (start it with --auth-token)"
    is_installed || die "Apache Pulsar is not fetched"
    JAVA_HOME_SEL="$(find_java_home)" || die "no JDK >= $MIN_JAVA found"
    datadir="$(cd "$datadir" && pwd)"
    TOOL_LOG_DIR="$datadir/logs/tools"
    pulsar_tool tokens create --secret-key "file://$datadir/secret.key" --subject "$subject"
}

main() {
    local cmd="${1:-}"
    (($#)) && shift
    case "$cmd" in
    fetch) (cmd_fetch) ;;
    check) cmd_check ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    token) cmd_token "$@" ;;
    *)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
    esac
}

main "$@"
