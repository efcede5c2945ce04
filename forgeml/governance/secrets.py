"""Secret detectors: private keys in any container, connection-string and config passwords,
known provider key formats, values named like secrets, passwords in prose, and unnamed
high-entropy tokens; public key material, integrity hashes and placeholders are kept.
No function here ever puts a matched value into a message, a log line or an exception.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Iterator

from forgeml.core.config import RedactConfig
from forgeml.governance.spans import Span

# ---- key material -----------------------------------------------------------------------

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|(?:[\sA-Za-z0-9+/=:,-]|\\n)*)",
    re.DOTALL,
)
_PUTTY_PRIVATE = re.compile(
    r"Private-Lines:[ \t]*\d+[ \t]*\r?\n(?:[ \t]*[A-Za-z0-9+/=]+(?:\r?\n|$))+"
    r"(?:Private-(?:MAC|Hash):[ \t]*[0-9a-fA-F]+)?"
)
# Public material that looks random, each pattern tried only where its marker occurs: PEM
# blocks other than private keys (certificates, public keys, CSRs; also JSON-escaped or
# indented), ssh public keys, PuTTY public lines, integrity and lock-file hashes (SRI, npm,
# go.sum), and data: URIs.
_PUBLIC = (
    (
        re.compile(
            r"-----BEGIN (?P<label>(?:(?!PRIVATE)[A-Z0-9 ])+)-----.*?-----END (?P=label)-----",
            re.DOTALL,
        ),
        ("-----BEGIN",),
    ),
    (
        re.compile(
            r"(?:ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-nistp\d+|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)"
            r"@openssh\.com)[ \t]+AAAA[A-Za-z0-9+/]+={0,3}"
        ),
        ("AAAA",),
    ),
    (
        re.compile(r"Public-Lines:[ \t]*\d+[ \t]*\r?\n(?:[ \t]*[A-Za-z0-9+/=]+\r?\n)+"),
        ("Public-Lines",),
    ),
    (
        re.compile(r"\b(?:sha(?:1|224|256|384|512)|md5)-[A-Za-z0-9+/]{20,}={0,2}"),
        ("sha1-", "sha224-", "sha256-", "sha384-", "sha512-", "md5-"),
    ),
    (re.compile(r"\bh1:[A-Za-z0-9+/]{43}="), ("h1:",)),
    (
        re.compile(r"\bdata:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,[A-Za-z0-9+/]+={0,2}"),
        (";base64,",),
    ),
)
# Base64 of a PEM block (Kubernetes secrets, kubeconfig `client-key-data`): decoded to decide.
_BASE64_PEM = re.compile(r"LS0tLS1CRUdJT[A-Za-z0-9+/]+={0,2}")

# ---- formats ------------------------------------------------------------------------------

_CONNECTION_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://(?P<u>[^:/\s@]*):(?P<v>[^@\s/]+)@")
# Provider key formats. Those made of token characters are looked for inside the tokens the
# unnamed-token scan finds anyway (one pass over the text); the others (dotted, URLs, Django's
# punctuation) only in documents holding their marker.
_KNOWN_IN_TOKEN = re.compile(
    r"[a-z]{2,12}_(?:sk|pk|rk|key|secret|token)_[A-Za-z0-9]{16,}"  # acme_sk_..., stripe-like
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{20,}|whsec_[A-Za-z0-9+/]{24,}"  # Stripe
    r"|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|gl(?:pat|dt|rt|ptt)-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|A(?:KI|SI)A[0-9A-Z]{16}"  # AWS access key ids
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{20,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}|GOCSPX-[A-Za-z0-9_-]{20,}"  # Google
    r"|SK[0-9a-fA-F]{32}(?![0-9a-zA-Z])"  # Twilio API key
    r"|npm_[A-Za-z0-9]{36}|pypi-AgE[A-Za-z0-9_-]{50,}"  # package registries
    r"|hf_[A-Za-z]{30,}|shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}|dop_v1_[a-f0-9]{64}"
    r"|sq0(?:atp|csp)-[A-Za-z0-9_-]{22,}"  # Square
)
_KNOWN_IN_TEXT = tuple(
    (marker, re.compile(pattern))
    for marker, pattern in (
        ("eyJ", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWT
        ("SG.", r"SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),  # SendGrid
        ("ya29.", r"ya29\.[A-Za-z0-9_-]{20,}"),  # Google OAuth access token
        ("django-insecure-", r"django-insecure-[^\s'\"]{20,}"),
        ("hooks.slack.com", r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[\w/-]{20,}"),
        ("/api/webhooks/", r"https://discord(?:app)?\.com/api/webhooks/[\w/-]{20,}"),
    )
)  # fmt: skip
# Each starts with a literal, so that Python's re finds candidates by a fast substring search.
_AUTH_VALUE = r"[ \t]+(?P<v>[A-Za-z0-9._~+/-]{12,}=*)(?![\w$])"
_CLI_USER = r"[ \t]+['\"]?[^\s:'\"]+:(?P<v>[^\s'\"]+)"
_NETRC = re.compile(r"machine[ \t]+\S+(?:\s+login[ \t]+\S+)?\s+password[ \t]+(?P<v>\S+)")
_GO_DSN = re.compile(r"(?<![\w/])[\w.-]+:(?P<v>[^@\s/\"':]+)@(?:tcp|unix|udp)\(")  # Go MySQL
_PGPASS = re.compile(r"(?m)^[^:\s#]+:(?:\d{1,5}|\*):[^:\s]+:[^:\s]+:(?P<v>\S+)$")
_REDIS_CONF = re.compile(r"(?m)^[ \t]*(?:requirepass|masterauth)[ \t]+(?P<v>\S+)")
_MYSQL_CLI = re.compile(
    r"\bmysql(?:dump|admin|import|check)?\b[^\n]*?[ \t]-p['\"]?(?P<v>[^\s'\"-][^\s'\"]*)"
)
# SQL, matched in the lower-cased text: `IDENTIFIED BY '…'`, `WITH PASSWORD '…'`.
_SQL_PASSWORDS = (
    re.compile(
        r"identified[ \t]+(?:with[ \t]+\S+[ \t]+)?by(?:[ \t]+password)?[ \t]+"
        r"(?P<q>['\"])(?P<v>[^'\"\n]{4,})(?P=q)"
    ),
    re.compile(r"password[ \t]+(?P<q>['\"])(?P<v>[^'\"\n]{4,})(?P=q)"),
)
# Values that prove themselves by shape (a password's, or a generated token's) once their
# context says "password here".
_PASSWORD_CONTEXTS = (
    (re.compile("Bearer" + _AUTH_VALUE), ("Bearer",), "token"),
    (re.compile("Basic" + _AUTH_VALUE), ("Basic",), "token"),
    (re.compile("Token" + _AUTH_VALUE), ("Token",), "token"),
    (re.compile("-u" + _CLI_USER), (" -u ", "\t-u "), "password"),
    (re.compile("--user" + _CLI_USER), (" --user ",), "password"),
    (_NETRC, ("machine",), "password"),
    (_GO_DSN, ("@tcp(", "@unix(", "@udp("), "password"),
    (_PGPASS, (":5432:", ":6432:", ":*:"), "password"),
    (_REDIS_CONF, ("requirepass", "masterauth"), "password"),
    (_MYSQL_CLI, ("mysql",), "password"),
)
# Values whose name (group `n`) says they are secret: call arguments, Terraform variable
# defaults, XML elements and attributes, SQL passwords.
_NAMED_CONTEXTS = (
    (
        re.compile(r"\(\s*['\"](?P<n>[\w.-]+)['\"]\s*,\s*[bru]?(?P<q>['\"])"
                   r"(?P<v>(?:\\.|(?!(?P=q))[^\n\\])+)(?P=q)"),
        ("(",),
    ),  # getenv('API_KEY', '…'), define('DB_PASSWORD', '…')
    (
        re.compile(r"variable[ \t]+\"(?P<n>[^\"]+)\"[ \t]*\{[^{}]*?\bdefault[ \t]*=[ \t]*\"(?P<v>[^\"]+)\""),
        ('variable "',),
    ),
    (re.compile(r"<(?P<n>[A-Za-z_][\w:.-]*)>(?P<v>[^<\n]{4,200})</(?P=n)>"), ("</",)),
    (
        re.compile(r"name=\"(?P<n>[^\"]+)\"(?:[ \t]+value=\"(?P<v>[^\"]*)\"|[ \t]*>(?P<v2>[^<\n]+)<)"),
        ('name="',),
    ),
    (
        re.compile(r"key=\"(?P<n>[^\"]+)\"(?:[ \t]+value=\"(?P<v>[^\"]*)\"|[ \t]*>(?P<v2>[^<\n]+)<)"),
        ('key="',),
    ),
)  # fmt: skip

# ---- named values ----------------------------------------------------------------------------

_SECRET_NAME = (
    r"passw(?:or)?d|passwd|passwort|kennwort|mot[ _-]de[ _-]passe|contrase(?:\u00f1|n)a|senha"
    r"|wachtwoord|pwd|passphrase|passcode|secret|token|api[_-]?key|apikey"
    r"|access[_-]?key|account[_-]?key|shared[_-]?access[_-]?key|private[_-]?key"
    r"|signing[_-]?key|encryption[_-]?key|master[_-]?key|client[_-]?secret|auth[_-]?key"
    r"|credentials?|(?<![a-z])pass(?![a-z])|(?<![a-z])pw(?![a-z])"
)
_NAMED_SECRET = re.compile(
    r"(?i)(?:" + _SECRET_NAME + r")(?P<k>[\w.-]*)[\"']?\]?[ \t]*(?::=|=>|[:=])[ \t]*"
    r"(?:[bBrRuU]{0,2}(?P<q>[\"'`])(?P<qv>(?:\\.|(?!(?P=q))[^\n\\])*)(?P=q)"
    r"|(?P<v>\{[^{}\s]*\}|[^\s\"',;<]+))"
)
# Where a secret's name may start (named values and prose), found case-sensitively in the
# lower-cased text: one scan, far faster than (?i); the full patterns are tried only there.
_NAME_START = re.compile(
    r"p(?:ass|w|in|rivate)|s(?:ecret|hared|igning|enha)|token|a(?:pi|ccess|ccount|uth)"
    r"|c(?:redential|ontrase)|m(?:aster|ot[ _-]de)|encryption|kennwort|wachtwoord"
)  # first letters factored out: Python's re tries far fewer branches per position
_SECRET_NAME_WORD = re.compile(r"(?i)" + _SECRET_NAME)
# Prose: "the root password is now X", "pw: X", "use this token: X", "the passcode 4821".
_PROSE_NAME = (
    r"passwords?|passwort|kennwort|mot de passe|contrase(?:\u00f1|n)a|senha|wachtwoord"
    r"|passphrase|passcode|pw|pwd|pin|token|api key|secret key"
)
_VERB = r"(?:is|was|has been|got|ist|lautet|war|est|es|era|\u00e9)"
_PROSE_SECRET = re.compile(
    r"(?i)\b(?P<n>" + _PROSE_NAME + r")\b"
    # "for the staging box is", "für das Büro lautet", "du compte de test est", "pw:"
    r"(?:(?P<c>(?:[ \t]+(?:for|of|on|to|f\u00fcr|du|de|del|da|do)(?:[ \t]+[\w.@/-]+){1,3}?)?"
    r"(?:[ \t]*[:=][ \t]*|[ \t]+(?:" + _VERB + r"[ \t]+)?(?:now|still|jetzt|maintenant|ahora"
    r"|agora|changed to|set to|reset to|updated to)[ \t]*:?[ \t]+|[ \t]+"
    + _VERB
    + r"[ \t]*:?[ \t]+))"
    r"|[ \t]+)"  # or the value right after the name: "passcode 4821", "password Xy7!q"
    r"(?:[\"'`\u201c](?P<qv>[^\s\"'`\u201d]{4,})[\"'`\u201d]|(?P<v>[^\s\"'`]{4,}))"
)
# "login admin / Passw0rd!": a user and a password side by side.
_LOGIN_PAIR = re.compile(
    r"(?i)\b(?:login|credentials?|creds)\b[^\n/]{0,40}?[ \t:][\w.@-]+[ \t]+/[ \t]+(?P<v>[^\s/]{4,})"
)

_PLACEHOLDER_VALUES = frozenset(
    "none null nil true false undefined required optional string str bytes int password "
    "passwd secret token xxx yyy changeme change-me replaceme replace-me redacted hidden "
    "masked example dummy sample placeholder todo tbd fixme test empty default value "
    "secret_key api_key apikey mypassword mysecret yourpassword pass".split()
)
_PLACEHOLDER_PARTS = frozenset("your here replace changeme example placeholder dummy".split())
_TEMPLATE = re.compile(
    r"\$\{[^}]*\}|\$\(.*\)|\{\{.*\}\}|%\(\w+\)s|%[A-Z_]+%"
    # `$DB_PASSWORD`, `{password}`, `{dbPassword}`: names, not random (`$cwBfIJyz6kXs`)
    r"|\$(?:[a-z_][a-z0-9_]*|[A-Z_][A-Z0-9_]*|[a-z]+(?:[A-Z][a-z]{2,}[0-9]*)+)"
    r"|\{(?:[a-z_][a-z0-9_.]*|[A-Z_][A-Z0-9_.]*|[a-z]+(?:[A-Z][a-z]{2,}[0-9]*)+)\}"
    r"|#\{[^}]*\}|<[^<>]+>|\[[^\[\]]+\]|\*+|[xX*.\u2022-]{4,}"
)
# A key named for a secret but holding something about it (`token_type = 'bearer'`,
# `password_min_length = 12`, `api_key_header = 'X-Api-Key'`), not the secret itself.
_ABOUT_A_SECRET = frozenset(
    "type types kind name names field header length len min max count format prefix "
    "pattern regex url uri path file dir env var expiry expires ttl policy label hint "
    "class scope method endpoint algorithm algo mode size timeout age validators reset "
    "hasher hashers hash rounds iterations info "
    "java py js ts txt md html xml json yaml yml cfg ini conf c h cc cpp go rs rb sh".split()
)
_FORMAT_FIELD = re.compile(
    r"\{(?:\d*|[a-z_][a-z0-9_.]*|[A-Z_][A-Z0-9_.]*)\}|%\(\w+\)[sd]|%[sd]|\$\{[^}]*\}"
)
_HTML_ENTITY = re.compile(r"&(?:quot|amp|lt|gt|apos|nbsp|#\d+|#x[0-9a-fA-F]+);?")
_URL_NO_USER = re.compile(r"[a-z][a-z0-9+.-]*://[^@\s]*$")  # a link, not a credential
_REFERENCE = re.compile(r"(?:var|local|module|data|each|self|secrets|vars|inputs)\.[\w.-]+$")
_CALL = re.compile(r"[A-Za-z_][\w.]*\(")  # `alice.computeSecret(bobKey)`
# `args.password`, `self.tokens[1]`: a variable, maybe subscripted, not a literal.
_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*(?:\[[\w.'\"-]*\])*$")

# ---- unnamed tokens ------------------------------------------------------------------------

_TOKEN = re.compile(r"(?<![\w+/=-])[A-Za-z0-9+/_=-]{16,}(?![\w+/=-])")
_WORD = re.compile(r"[a-z]+\d*|[A-Z]+\d*|[A-Z][a-z]+\d*")
_CAMEL_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_HUMP = re.compile(r"[A-Z]?[a-z]{3,}")  # a camel-case word of 4+ letters (all-caps runs not)
_PLAIN_PART = re.compile(r"[0-9a-fA-F-]+|[a-z]+|[A-Z]+|[A-Z][a-z]+")
_LONG_BLOB = 100  # unnamed base64 this long is decoded: file data is kept, key material not
_FILE_MAGIC = (
    b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"%PDF", b"PK\x03\x04", b"\x1f\x8b", b"RIFF",
    b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00", b"OggS", b"ID3", b"\x7fELF", b"<",
    b"{", b"wOF", b"\x00\x01\x00\x00",
)  # fmt: skip


def shannon_entropy(s: str) -> float:
    """Bits per character of `s` from its own character frequencies."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


def _class_changes(token: str) -> float:
    """Share of adjacent characters of different classes (lower/upper/digit/other): random
    keys switch often, paths and identifiers (`docs/025_quick_ref`) seldom."""

    def cls(c: str) -> int:
        return 0 if c.islower() else 1 if c.isupper() else 2 if c.isdigit() else 3

    classes = [cls(c) for c in token]
    return sum(a != b for a, b in zip(classes, classes[1:], strict=False)) / max(1, len(token))


def _wordy(token: str) -> bool:
    """Paths and identifiers: most characters sit in plain words. Either separator-delimited
    segments of three letters or more (`Modules/_blake2/impl/round`), or at least three
    camel-case words of four letters or more (`InvalidBase64LengthDefect`; capitalised or
    lower case, not all-caps runs), which a random key (`kJ8sD2mQ9xZ4vB7n`) seldom has."""
    segments = [seg for seg in re.split(r"[/_.+=-]", token) if seg]
    total = sum(map(len, segments))
    if len(segments) >= 2:
        words = sum(len(seg) for seg in segments if len(seg) >= 3 and _WORD.fullmatch(seg))
        if words >= 0.6 * total:
            return True
    humps = [p for p in _CAMEL_PARTS.findall(token) if _HUMP.fullmatch(p)]
    return len(humps) >= 3 and sum(map(len, humps)) >= 0.8 * total


def is_placeholder(value: str) -> bool:
    """Documentation and template stand-ins: `<your-password>`, `${DB_PASSWORD}`, `changeme`,
    `{{ .Values.password }}`, `****`, `YOUR_API_KEY_HERE`, `ghp_xxxxxxxx…`."""
    v = value.strip("`\"'").rstrip(".,;:").strip("`\"'")
    if not v or _TEMPLATE.fullmatch(v) or v.lower().strip("<>[]{}()*") in _PLACEHOLDER_VALUES:
        return True
    if not any(c.isalnum() for c in _FORMAT_FIELD.sub("", v)):
        return True  # only format fields and punctuation: `{0}:{1}`, `%s:%s`
    parts = set(re.split(r"[-_. ]+", v.lower()))
    if parts & _PLACEHOLDER_PARTS or " " in v and _SECRET_NAME_WORD.search(v):
        return True  # or a description: "Password used to generate key"
    tail = re.sub(r"^[A-Za-z]{2,12}[_-](?:[a-z]{2,8}[_-])?", "", v)  # ghp_, sk_live_
    return len(tail) >= 8 and len(set(tail.lower())) <= 2


def _password_shaped(value: str, name: str, quoted: bool = False) -> bool:
    """A word after `password is` that is a password, not English (`required`, `stored`):
    digits or symbols or inner capitals; digits alone for passcodes and PINs. Outside
    quotes, markup (`<span`, `&quot;`) is not a password."""
    if (
        is_placeholder(value)
        or not quoted
        and (value[0] in "<{[(&" or "</" in value or _REFERENCE.match(value) or _CALL.match(value))
    ):
        return False  # markup, a template, a reference or a call, not a password
    if not quoted and _HTML_ENTITY.search(value) or any(c.isspace() for c in value):
        return False
    if value.isdigit():
        if name in ("passcode", "pin"):
            return len(value) >= 4
        return len(value) >= 6 and name in ("password", "pw", "pwd", "passphrase")
    if name == "pin":
        return False
    has_digit = any(c.isdigit() for c in value)
    has_symbol = any(not c.isalnum() for c in value)
    inner_caps = any(c.isupper() for c in value[1:]) and any(c.islower() for c in value)
    if name in ("token", "api key", "secret key"):
        return len(value) >= 16 and (has_digit or inner_caps) and not _wordy(value)
    return has_digit or has_symbol or inner_caps


def _token_shaped(value: str, min_length: int = 12) -> bool:
    """Generated-looking: digits, or mixed case with symbols, and not made of words
    (`Basic POSIX-compliant`, `Bearer authentication` are prose)."""
    if len(value) < min_length or is_placeholder(value) or _wordy(value):
        return False
    has_digit = any(c.isdigit() for c in value)
    mixed = any(c.isupper() for c in value[1:]) and any(c.islower() for c in value)
    return has_digit or mixed and any(c in "+/=$!#%&*?@^~_-" for c in value)


def _named_value_is_secret(value: str, quoted: bool, in_code: bool) -> bool:
    if len(value.rstrip(".,;:")) < 4 or is_placeholder(value) or _URL_NO_USER.match(value):
        return False
    if quoted:
        return True  # a literal, whatever its characters (Django keys have `(`, `$`, `%`)
    if value[0] in "<{[(" and not _odbc_braced(value) or _CALL.match(value):
        return False  # an expression, a call or a template, not a literal
    if value.endswith((".", "->")) or _REFERENCE.match(value):
        return False  # an expression cut short by markup, or `var.db_password` (HCL)
    # In code an unquoted name (`password = args.password`) or a subscript is not a value.
    return not (in_code and (_IDENTIFIER_PATH.match(value) or "(" in value or "[" in value))


def _odbc_braced(value: str) -> bool:
    """`Pwd={p@ss;word}`: ODBC's quoting, not a `{name}` template."""
    return value.startswith("{") and value.endswith("}") and not _TEMPLATE.fullmatch(value)


def _names_a_secret(name: str) -> bool:
    """`DB_PASSWORD`, `hibernate.connection.password`: a name for a secret, not for
    something about one (`password_min_length`)."""
    m = _SECRET_NAME_WORD.search(name)
    return bool(m) and re.split(r"[_.-]", name[m.end() :])[-1].lower() not in _ABOUT_A_SECRET


def _lower(text: str) -> str:
    """`text` lower-cased, one character for one (positions stay valid): `İ` is the one
    character whose lower case is two."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text.replace("\u0130", "I").lower()


def _named_secrets(text: str, starts: list[int], in_code: bool) -> Iterator[Span]:
    """Values assigned to a key named like a secret (`password: …`, `SECRET_KEY = '…'`)."""
    taken = 0
    for m in (m for pos in starts if (m := _NAMED_SECRET.match(text, pos))):
        if m.start() < taken:
            continue  # a name inside the assignment just read
        taken = m.end()
        about = re.split(r"[_.-]", m.group("k"))[-1].lower()
        if about in _ABOUT_A_SECRET:
            continue
        group = "qv" if m.group("q") else "v"
        start, end = m.span(group)
        if group == "v" and text[m.start() - 1 : m.start()] in ("?", "&", ";"):
            end = start + len(m.group("v").split("&")[0])  # a query parameter ends at `&`
        if _named_value_is_secret(text[start:end], group == "qv", in_code):
            yield Span(start, end, "secret")


def _prose_secrets(text: str, lowered: str, starts: list[int]) -> Iterator[Span]:
    """Passwords and tokens in sentences: `the root password is now …`, `pw: …`."""
    for m in (m for pos in starts if (m := _PROSE_SECRET.match(text, pos))):
        group = "qv" if m.group("qv") else "v"
        start, end = m.span(group)
        value = text[start:end]
        if group == "v" and is_placeholder(value):
            continue
        if group == "v":
            value = value.rstrip(".,;:)]}")
            end = start + len(value)
        name = m.group("n").lower().rstrip("s")
        bare = group == "v" and m.group("c") is None  # no `is` or `:` after the name
        if bare and not (any(c.isdigit() for c in value) or _token_shaped(value, 4)):
            continue  # "passphrase confidential", "Basic customization."
        if len(value) >= 4 and _password_shaped(value, name):
            yield Span(start, end, "secret")
    for m in _LOGIN_PAIR.finditer(text) if "login" in lowered or "cred" in lowered else ():
        if _password_shaped(m.group("v"), "password"):
            yield Span(m.start("v"), m.end("v"), "secret")


def _known_in_token(text: str, start: int, token: str) -> Iterator[Span]:
    for k in _KNOWN_IN_TOKEN.finditer(token):
        begin = start + k.start()
        if begin and (text[begin - 1].isalnum() or text[begin - 1] == "_"):
            continue  # inside a longer word
        if not is_placeholder(k.group()):
            yield Span(begin, start + k.end(), "secret")


def _decoded(token: str) -> bytes | None:
    try:
        padded = token + "=" * (-len(token) % 4)
        if "-" in token or "_" in token:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _key_material(raw: bytes) -> bool:
    """Decoded bytes that hold a private key: PEM or OpenSSH text, a service-account JSON,
    or DER (PKCS#1/#8/SEC1) whose first element is the INTEGER version 0 or 1."""
    if b"PRIVATE KEY" in raw or b"openssh-key-v1" in raw or b'"private_key"' in raw:
        return True
    return raw[:1] == b"\x30" and (raw[2:5] in (b"\x02\x01\x00", b"\x02\x01\x01")
                                   or raw[4:7] in (b"\x02\x01\x00", b"\x02\x01\x01"))  # fmt: skip


def _long_blob_is_secret(token: str) -> bool | None:
    """A long random-looking base64 run: key material is secret, file data (images,
    documents, certificates, text) is not; None when it does not decode."""
    raw = _decoded(token)
    if raw is None:
        return None
    if _key_material(raw):
        return True
    if raw.startswith(_FILE_MAGIC) or raw[:1] == b"\x30":  # DER: certificates, public keys
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in raw[:256])
    return printable < 0.9 * min(len(raw), 256)  # random bytes: a generated secret


def secret_spans(
    text: str, cfg: RedactConfig | None = None, in_code: bool = False
) -> Iterator[Span]:
    """Secrets in `text` (spans may overlap): private keys in any container, passwords in
    connection strings, configs, command lines and prose, known provider formats, values
    named like secrets, and unnamed high-entropy tokens outside public key material."""
    cfg = cfg or RedactConfig()
    public = [
        m.span()
        for pattern, markers in _PUBLIC
        if any(x in text for x in markers)
        for m in pattern.finditer(text)
    ]
    for m in _PRIVATE_KEY.finditer(text) if "PRIVATE KEY" in text else ():
        yield Span(m.start(), m.end(), "secret")
    for m in _PUTTY_PRIVATE.finditer(text) if "Private-Lines" in text else ():
        yield Span(m.start(), m.end(), "secret")
    for m in _BASE64_PEM.finditer(text) if "LS0tLS1CRUdJT" in text else ():
        raw = _decoded(m.group())
        if raw is not None and _key_material(raw):
            yield Span(m.start(), m.end(), "secret")
        else:
            public.append(m.span())
    for m in _CONNECTION_PASSWORD.finditer(text) if "://" in text else ():
        anonymous = not m.group("u") and ":" in m.group("v")  # `cvs://:pserver:anoncvs@`
        if not anonymous and not is_placeholder(m.group("v")):
            yield Span(m.start("v"), m.end("v"), "secret")
    for marker, pattern in _KNOWN_IN_TEXT:
        for m in pattern.finditer(text) if marker in text else ():
            if not is_placeholder(m.group()):
                yield Span(m.start(), m.end(), "secret")
    for pattern, markers, shape in _PASSWORD_CONTEXTS:
        for m in pattern.finditer(text) if any(x in text for x in markers) else ():
            value, quoted = m.group("v"), text[m.start("v") - 1] in "'\""
            if _token_shaped(value) if shape == "token" else _password_shaped(value, "pw", quoted):
                yield Span(m.start("v"), m.end("v"), "secret")
    for pattern, markers in _NAMED_CONTEXTS:
        for m in pattern.finditer(text) if any(x in text for x in markers) else ():
            group = "v" if m.group("v") is not None else "v2"
            name = m.group("n") if "n" in pattern.groupindex else "password"
            if _names_a_secret(name) and _password_shaped(m.group(group), "password", True):
                yield Span(m.start(group), m.end(group), "secret")
    lowered = _lower(text)
    for pattern in _SQL_PASSWORDS if "identified" in lowered or "password" in lowered else ():
        for m in pattern.finditer(lowered):
            if _password_shaped(text[m.start("v") : m.end("v")], "password", True):
                yield Span(m.start("v"), m.end("v"), "secret")
    starts = [m.start() for m in _NAME_START.finditer(lowered)]
    yield from _named_secrets(text, starts, in_code)
    if not in_code:
        yield from _prose_secrets(text, lowered, starts)
    yield from _tokens(text, cfg, public)


def _tokens(text: str, cfg: RedactConfig, public: list[tuple[int, int]]) -> Iterator[Span]:
    """Runs of key characters outside public material: known provider formats inside them,
    else the run itself when it looks generated."""
    for m in _TOKEN.finditer(text):
        if public and any(s <= m.start() and m.end() <= e for s, e in public):
            continue
        known = list(_known_in_token(text, m.start(), m.group()))
        if known:
            yield from known
            continue
        # A path whose every part is hex, one plain word or words (`node/commit/67a1f0c5...`)
        # is not a key; else the token, or any part of it, decides (base64 has `/`).
        token = m.group()
        parts = token.split("/")
        if len(parts) > 1 and all(not p or _PLAIN_PART.fullmatch(p) or _wordy(p) for p in parts):
            continue
        if not (
            _random_key(token, cfg) or len(parts) > 1 and any(_random_key(p, cfg) for p in parts)
        ):
            continue
        # A long random-looking run is decoded: key material is secret, file data is not.
        if len(token) < _LONG_BLOB or _long_blob_is_secret(token.rstrip("=")) is not False:
            yield Span(m.start(), m.end(), "secret")


def _random_key(token: str, cfg: RedactConfig) -> bool:
    """An unnamed token that looks like a generated key: long, letters and digits, high
    entropy, frequent class changes, and not hex or made of words."""
    if len(token) < cfg.min_token_length or re.fullmatch(r"[0-9a-fA-F-]+", token):
        return False  # hex: commit ids and digests, which are everywhere and not secret
    if not (re.search(r"\d", token) and re.search(r"[A-Za-z]", token)) or _wordy(token):
        return False
    return shannon_entropy(token) >= cfg.min_entropy and _class_changes(token) >= 0.2
