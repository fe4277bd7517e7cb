"""Redaction: every string that leaves the process passes through one :class:`Redactor`.

Log lines, ``/status``, ``/readyz``, ``/metrics``, dead-letter ``error`` properties and CLI
output all call :meth:`Redactor.redact`. It hides, in this order:

1. *known values*, by exact value: every secret the config revealed (a
   :class:`~bridge.secrets.Secret` built with this redactor registers what ``reveal()``
   returns) and every token a :class:`~bridge.auth.TokenCache` was issued (its
   ``on_token`` hook is :meth:`Redactor.register_token`). Each value is also matched in the
   forms it takes on its way out: whitespace folded (error snippets), backslash-escaped
   (``repr``, JSON), percent-encoded. For known client ids, ``<id>:<anything>`` and the
   Basic base64 of ``<id>:<secret>`` are hidden too; the id itself is not a secret;
2. *shapes* of credentials, known or not: ``Bearer <token>``, ``Basic <base64 id:secret>``,
   JWTs, Databricks tokens (``dapi...``, ``dose...``), long random-looking runs (a token
   cut in half by a length limit no longer matches its exact value), and ``env:``/``file:``
   references whose target is a secret rather than a variable name or a path (the
   ``client_secret = "env:<the secret itself>"`` typo);
3. *control characters*, escaped (``\\n``, ``\\x1b``), so no value can split a log line
   or drive a terminal.

A peer's words kept in an error are cut to a length by :func:`shorten`, shapes hidden
first and never inside a token: half a token would match neither its value nor its shape.

Values shorter than :data:`MIN_LENGTH` are never registered: they would blank out ordinary
words. Tokens are kept for the last :attr:`Redactor.max_tokens` issued (older ones have
expired), secrets for the last ``max_secrets`` distinct values (a rotated file adds one).

Cost on the hot path (a ``batch`` log line per request): the known values are compiled into
one regular expression, rebuilt only when a new value arrives (a token refresh, a rotated
secret), so a string with nothing to hide costs two regex scans and a control-character
scan. There is no module-level registry: the CLI creates one Redactor per process and the
daemon passes it down. :func:`scrub` (shapes and control characters only, no state) is what
a component does when it was given no redactor, as in unit tests.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "**********"
MIN_LENGTH = 6

# Characters that could end a credential in running text: whitespace, quotes, separators.
_CREDENTIAL = r"[^\s'\",;<>()\[\]{}]"
# Each shape starts where a run of token characters starts (the look-behind), which lets
# the scan skip the inside of words: five times faster than word boundaries per shape.
_SHAPES = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    rf"(?P<scheme>[Bb](?i:earer)\s+){_CREDENTIAL}{{8,}}"
    r"|(?P<basic>Basic\s+)(?P<b64>[A-Za-z0-9+/]{4,}={0,2})"
    rf"|(?P<ref>(?:env|file):)(?P<target>{_CREDENTIAL}+)"
    r"|eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)*"
    r"|d(?:api|ose)[0-9a-f]{16,}(?:-\d+)?"
    r"|(?P<run>[A-Za-z0-9_-]{32,}+))"
)
# A cut must not split a run of these (see shorten).
_CREDENTIAL_CHAR = re.compile(_CREDENTIAL)
# What a token looks like inside a longer run, e.g. ``token_dapi0123...``.
_TOKEN_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}|d(?:api|ose)[0-9a-f]{16,}")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# C0 and C1 controls, DEL and the Unicode line/paragraph separators; the multi-line variant
# keeps newlines and tabs (Prometheus text, formatted tracebacks).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CACHE_SIZE = 1024
_CACHED_LENGTH = 512


class Redactor:
    """Knows every secret and token of this process by value and hides them, and more.

    ``register``/``register_token``/``register_client_id`` may be called from any thread;
    ``redact`` reads one compiled pattern and one result cache, both swapped whole when a
    value is added, so a result computed before a value was known is never served after.
    """

    def __init__(self, *, max_tokens: int = 32, max_secrets: int = 256) -> None:
        self.max_tokens = max_tokens
        self.max_secrets = max_secrets
        # Insertion-ordered, oldest first, for eviction.
        self._secrets: dict[str, None] = {}
        self._tokens: dict[str, None] = {}
        self._client_ids: dict[str, None] = {}
        self._lock = threading.Lock()
        self._known: re.Pattern[str] | None = None
        # Log lines repeat the same few strings (route, outcome, a persisting error), so
        # one-line results are remembered until the known values change.
        self._cache: dict[str, str] = {}
        self.rebuilds = 0  # how often the pattern was compiled (it is not free)

    def register(self, value: str) -> None:
        """A secret's value: a client secret, a PAT, a Pulsar token, an IdP token."""
        self._add(self._secrets, value, self.max_secrets)

    def register_token(self, value: str) -> None:
        """An access token that was just issued (``TokenCache(on_token=...)``)."""
        self._add(self._tokens, value, self.max_tokens)

    def register_client_id(self, value: str) -> None:
        """A client id: shown as itself, but ``<id>:<x>`` and its Basic pairs are hidden."""
        self._add(self._client_ids, value, self.max_secrets)

    def _add(self, store: dict[str, None], value: str, limit: int) -> None:
        if len(value) < MIN_LENGTH or value in store:
            return  # the common case (a secret read again at every token fetch): no work
        with self._lock:
            store[value] = None
            while len(store) > limit:
                del store[next(iter(store))]
            self._known = self._compile()
            self._cache = {}
            self.rebuilds += 1

    def _compile(self) -> re.Pattern[str] | None:
        values: set[str] = set()
        for value in (*self._secrets, *self._tokens):
            values.update(_forms(value))
        for client_id in self._client_ids:
            for secret in self._secrets:
                values.update(_basic_forms(client_id, secret))
        parts = []
        if self._client_ids:
            ids = "|".join(_alternatives(_forms(i) for i in self._client_ids))
            # The id stays readable; whatever is glued to it with ':' is taken as its secret.
            parts.append(rf"(?P<pair>(?<![\w-])(?:{ids})(?::|%3A)){_CREDENTIAL}+")
        if values:
            parts.append("|".join(_alternatives([values])))
        return re.compile("|".join(parts)) if parts else None

    def redact(self, text: str, *, multiline: bool = False) -> str:
        """``text`` with every known value and credential shape hidden, controls escaped.

        ``multiline`` keeps newlines and tabs, for documents made of lines (Prometheus
        text, a formatted traceback); everything else is for one-line values.
        """
        cache = self._cache
        if not multiline:
            done = cache.get(text)
            if done is not None:
                return done
        known = self._known
        redacted = text if known is None else known.sub(_hide_known, text)
        redacted = scrub(redacted, multiline=multiline)
        if not multiline and len(text) <= _CACHED_LENGTH:
            if len(cache) >= _CACHE_SIZE:
                cache.clear()  # a burst of distinct strings; start over rather than track age
            cache[text] = redacted
        return redacted


def scrub(text: str, *, multiline: bool = False) -> str:
    """Credential shapes hidden and control characters escaped; no known values (stateless)."""
    text = _SHAPES.sub(_hide_shape, text)
    controls = _CONTROL_BUT_LINES if multiline else _CONTROL
    return controls.sub(_escape_control, text)


def shorten(text: str, limit: int, *, tail: int = 0) -> str:
    """A peer's ``text`` in at most ``limit`` characters for an error message: its start
    and, with ``tail``, its last ``tail`` characters after `` ... ``.

    Redaction comes first and no cut falls inside a run of characters a credential could
    be made of (a run that crosses a cut is left out whole): a token cut in half matches
    neither its known value nor its shape downstream, and its first part would leak.
    """
    text = scrub(text)
    if len(text) <= limit:
        return text
    if tail <= 0:
        return _cut_after(text, limit)
    return f"{_cut_after(text, max(limit - tail - 5, 0))} ... {_cut_before(text, tail)}"


def _cut_after(text: str, keep: int) -> str:
    """The first ``keep`` characters, less the start of a run that goes on past them."""
    if _CREDENTIAL_CHAR.match(text, keep):
        while keep > 0 and _CREDENTIAL_CHAR.match(text, keep - 1):
            keep -= 1
    return text[:keep]


def _cut_before(text: str, keep: int) -> str:
    """The last ``keep`` characters, less the end of a run that began before them."""
    start = len(text) - keep
    if start > 0 and _CREDENTIAL_CHAR.match(text, start - 1):
        while start < len(text) and _CREDENTIAL_CHAR.match(text, start):
            start += 1
    return text[start:]


def redact_json(content: Any, redact: Callable[[str], str]) -> Any:
    """A JSON-able document with every string in it, keys included, through ``redact``."""
    if isinstance(content, str):
        return redact(content)
    if isinstance(content, dict):
        return {redact(str(k)): redact_json(v, redact) for k, v in content.items()}
    if isinstance(content, list | tuple):
        return [redact_json(item, redact) for item in content]
    return content


def suspicious_reference(kind: str, target: str) -> bool:
    """Whether the target of ``env:<target>``/``file:<target>`` looks like a secret itself.

    An ``env:`` target must be a variable name; anything else (or a token-shaped name) is
    the secret pasted where its variable's name belongs. A ``file:`` target with no ``/``
    or ``.`` that looks random or token-shaped is taken for a secret as well.
    """
    if kind == "file" and ("/" in target or "." in target):
        return False  # a path, however odd its names
    if _TOKEN_SHAPE.search(target) or _looks_random(target):
        return True
    return kind == "env" and _VARIABLE_NAME.fullmatch(target) is None


def _hide_known(match: re.Match[str]) -> str:
    pair = match.group("pair") if "pair" in match.re.groupindex else None
    return f"{pair}{REDACTED}" if pair is not None else REDACTED


def _hide_shape(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    if scheme is not None:
        return f"{scheme}{REDACTED}"
    basic = match.group("basic")
    if basic is not None:
        return f"{basic}{REDACTED}" if _is_basic_credential(match.group("b64")) else match[0]
    ref = match.group("ref")
    if ref is not None:
        hidden = suspicious_reference(ref[:-1], match.group("target"))
        return f"{ref}{REDACTED}" if hidden else match[0]
    run = match.group("run")
    if run is not None and not (_looks_random(run) or _TOKEN_SHAPE.search(run)):
        return run
    return REDACTED


def _is_basic_credential(encoded: str) -> bool:
    """``Basic <x>``: credentials when ``x`` decodes to ``id:secret``, or when it is cut
    short but clearly not an English word ("Basic realm", "basic validation")."""
    try:
        if b":" in base64.b64decode(encoded, validate=True):
            return True
    except (binascii.Error, ValueError):
        pass
    word = encoded.isalpha() and (encoded.islower() or encoded.istitle() or encoded.isupper())
    return len(encoded) >= 8 and not word


def _looks_random(text: str) -> bool:
    """Mixed-case letters and digits that change class often: a key, not a name.

    Random base64 changes between upper, lower and digit at about 60% of positions;
    camelCase names and words do so far less (``FraudModelVersion2Production``: 29%).
    """
    if len(text) < 20 or text.islower() or text.isupper():
        return False  # one case only (digits and separators aside): a name
    kinds = [
        "u" if c.isupper() else "l" if c.islower() else "d" if c.isdigit() else "o" for c in text
    ]
    if not {"u", "l", "d"} <= set(kinds):
        return False
    changes = sum(1 for a, b in itertools.pairwise(kinds) if a != b)
    return changes * 5 >= len(text) * 2


def _escape_control(match: re.Match[str]) -> str:
    char = match[0]
    escaped = _ESCAPES.get(char)
    if escaped is not None:
        return escaped
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _forms(value: str) -> set[str]:
    """The ways a value shows up in text that left through a library, a server or a log."""
    forms = {
        value,
        " ".join(value.split()),  # error snippets fold whitespace
        _CONTROL.sub(_escape_control, value),  # repr(), and this module's own escaping
        json.dumps(value)[1:-1],  # echoed inside a JSON string
        quote(value, safe=""),  # a URL or a form body
        quote_plus(value),
    }
    return {form for form in forms if len(form) >= MIN_LENGTH}


def _basic_forms(client_id: str, secret: str) -> set[str]:
    """Basic credentials of a pair, raw and with RFC 6749's form-encoding of each part."""
    pairs = (f"{client_id}:{secret}", f"{quote_plus(client_id)}:{quote_plus(secret)}")
    return {base64.b64encode(pair.encode()).decode("ascii").rstrip("=") for pair in pairs}


def _alternatives(groups: Iterable[set[str]]) -> list[str]:
    """Escaped alternatives, longest first so a value wins over any value inside it."""
    values = {value for group in groups for value in group}
    return [re.escape(value) for value in sorted(values, key=len, reverse=True)]
