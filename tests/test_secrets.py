"""Secret detection per kind: every secret is covered by a secret span, and public material
that looks like one (public keys, lock-file and integrity hashes, digests, placeholders,
prose about passwords, code that reads them) is not."""

from __future__ import annotations

import base64
import random
import string

import pytest

from forgeml.governance.secrets import is_placeholder, secret_spans

PEM_BODY = "\n".join(["MIIEowIBAAKCAQEA7x" + "k" * 46] + ["Ab3+/9xYz" * 7 + "q"] * 3)


def _covered(text: str, value: str, in_code: bool = False) -> bool:
    start = text.index(value)
    spans = list(secret_spans(text, in_code=in_code))
    return all(any(s.start <= i < s.end for s in spans) for i in range(start, start + len(value)))


def _touched(text: str, value: str, in_code: bool = False) -> bool:
    start = text.index(value)
    end = start + len(value)
    return any(s.start < end and start < s.end for s in secret_spans(text, in_code=in_code))


POSITIVES = [
    # connection strings
    ("DATABASE_URL=postgres://app:cq9GFz6Y1t9Ew@db.internal:5432/orders", "cq9GFz6Y1t9Ew", False),
    ("url: mysql://svc:Tundr%40717@mysql.lan:3306/shop?charset=utf8mb4", "Tundr%40717", False),
    ('MongoClient("mongodb+srv://etl:p4ss-W0rd@cluster0.ab1cd.mongodb.net/")', "p4ss-W0rd", True),
    ("REDIS_URL=redis://:e52RvEJgwBuNO6n9JEC3@cache:6379/0", "e52RvEJgwBuNO6n9JEC3", False),
    ("BROKER_URL: amqp://app:Hazel2017%23@queue:5672/%2F", "Hazel2017%23", False),
    ("jdbc:postgresql://db:5432/app?user=app&password=S3cr3t%21x&ssl=true", "S3cr3t%21x", False),
    ("Driver={ODBC Driver 18};Server=db;Uid=sa;Pwd={Beacon2023!};", "{Beacon2023!}", False),
    (
        "Server=tcp:x.database.windows.net;User ID=admin;Password=Fjord2023$;Encrypt=True;",
        "Fjord2023$",
        False,
    ),  # fmt: skip
    ('dsn := "app:Wint3r2024x@tcp(10.0.0.5:3306)/shop"', "Wint3r2024x", True),
    ("db.internal:5432:app:app_user:Gq7vP2xLm9", "Gq7vP2xLm9", False),
    # config files
    ("[database]\npassword = Nickel60\n", "Nickel60", False),
    ("[smtp]\npass = O@sis269\n", "O@sis269", False),
    ("      RABBITMQ_DEFAULT_PASS: NJCb#T%RljN^2CVWsDK\n", "NJCb#T%RljN^2CVWsDK", False),
    ("      - MYSQL_ROOT_PASSWORD=Cedar1999!\n", "Cedar1999!", False),
    ("spring.datasource.password=raven-pebble-glacier-78\n", "raven-pebble-glacier-78", False),
    ('[database]\npassword = "k(9)Lm2!vQx"\n', "k(9)Lm2!vQx", False),
    (
        "//registry.npmjs.org/:_authToken=8f8b7281-d0ae-45b4-b1fc-47284bc10248",
        "8f8b7281-d0ae-45b4-b1fc-47284bc10248",
        False,
    ),  # fmt: skip
    ("machine git.acme.lan login jenkins password VF*oAXNvd1V6", "VF*oAXNvd1V6", False),
    ("requirepass 7fGh2kLq9xZ\nbind 0.0.0.0", "7fGh2kLq9xZ", False),
    ('variable "db_password" {\n  default = "Hx7!pQ2mZk"\n}', "Hx7!pQ2mZk", False),
    ("<server><password>Jenk1ns$ecret</password></server>", "Jenk1ns$ecret", False),
    ('<property name="connection.password">Hib3rn8!pw</property>', "Hib3rn8!pw", False),
    ('<add key="DbPassword" value="Xk9#mQ2!pL" />', "Xk9#mQ2!pL", False),
    # settings modules and code
    (
        "SECRET_KEY = 'django-insecure-9ak5b%qviwg$90+eq!g7e@i5c7owg9-nl(&ozm#(=2wkr_w9mn'",
        "django-insecure-9ak5b%qviwg$90+eq!g7e@i5c7owg9-nl(&ozm#(=2wkr_w9mn",
        True,
    ),  # fmt: skip
    (
        "SECRET_KEY = '(b)la#8rw=nymull5&j$@6s(vw%#yz@z(6t*+!pm1nq6k6i#7'",
        "(b)la#8rw=nymull5&j$@6s(vw%#yz@z(6t*+!pm1nq6k6i#7",
        True,
    ),  # fmt: skip
    (
        "SECRET_KEY = os.getenv('DJANGO_SECRET_KEY', 'qanl$l&x$ra*&bb#ktpz5=xwf@1h')",
        "qanl$l&x$ra*&bb#ktpz5=xwf@1h",
        True,
    ),  # fmt: skip
    (
        "app.config['SECRET_KEY'] = '1d142d9a61a4a8ffa82e538ced5d4335'",
        "1d142d9a61a4a8ffa82e538ced5d4335",
        True,
    ),  # fmt: skip
    (r"app.secret_key = b'\xc7\xa38\x96?\xf4\xa1\xa0'", r"\xc7\xa38\x96?\xf4\xa1\xa0", True),
    ("define( 'DB_PASSWORD', 'k9#Lm2!vQx' );", "k9#Lm2!vQx", True),
    ("'password' => env('DB_PASSWORD', 'S3cretDefault!'),", "S3cretDefault!", True),
    ("CREATE USER 'etl'@'%' IDENTIFIED BY 'Etl#2024pass';", "Etl#2024pass", True),
    ("ALTER USER app WITH PASSWORD 'N0tS0Secret!';", "N0tS0Secret!", True),
    # prose, mail, tickets, command lines
    ("The VPN password is Pepper2006# until Friday.", "Pepper2006#", False),
    (
        "the root password is now bamboo-oasis-cactus-81 (rotate after the audit)",
        "bamboo-oasis-cactus-81",
        False,
    ),  # fmt: skip
    ("The shared mailbox password was changed to Cactus2018$.", "Cactus2018$", False),
    ("* Wi-Fi for the lab, pw: Tundra2007*", "Tundra2007*", False),
    ("The wiki passcode 69109487 stays the same.", "69109487", False),
    (
        "For the metrics API use this token: 9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddcc",
        "9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddcc",
        False,
    ),  # fmt: skip
    ("Steps: log in as app with password WnopPaiR$XHXUST -> 500 error.", "WnopPaiR$XHXUST", False),
    ("das WLAN-Passwort für das Büro lautet jetzt: ji2uK5kCUM4AJURA", "ji2uK5kCUM4AJURA", False),
    ("le mot de passe du compte de test est C0r@l149 (à changer)", "C0r@l149", False),
    ("the admin login for the router is admin / Rout3r!2024, change it", "Rout3r!2024", False),
    ("curl -u grafana:L@ntern106 https://registry.acme.lan/v2/_catalog", "L@ntern106", False),
    ("mysql -h db -u root -p'&OXt@IaUf#Q$*yO' shop < backup.sql", "&OXt@IaUf#Q$*yO", False),
    (
        'curl -H "Authorization: Bearer kJ8sD2mQ9xZ4vB7nT5wR3yU1aB2c" https://x',
        "kJ8sD2mQ9xZ4vB7nT5wR3yU1aB2c",
        False,
    ),  # fmt: skip
    ("> Authorization: Basic YWRtaW46TmVjdEByODU=", "YWRtaW46TmVjdEByODU=", False),
    # provider formats
    (
        "STRIPE_SECRET_KEY=sk_live_T0YQOaNF03vpUuT3em6KopZ9",
        "sk_live_T0YQOaNF03vpUuT3em6KopZ9",
        False,
    ),
    (
        "key 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",
        "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",
        False,
    ),  # fmt: skip
    (
        "export TWILIO_API_KEY=SK0123456789abcdef0123456789abcdef",
        "SK0123456789abcdef0123456789abcdef",
        False,
    ),  # fmt: skip
    (
        "export NPM_TOKEN=npm_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5",
        "npm_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5",
        False,
    ),  # fmt: skip
    (
        "password = pypi-AgEIcHlwaS5vcmc" + "x1Y2z3" * 10,
        "pypi-AgEIcHlwaS5vcmc" + "x1Y2z3" * 10,
        False,
    ),  # fmt: skip
    (
        "HF_TOKEN=hf_" + "abcdEFGHijklMNOPqrstUVWXyzabCDEFgh",
        "hf_" + "abcdEFGHijklMNOPqrstUVWXyzabCDEFgh",
        False,
    ),  # fmt: skip
    (
        "hook: https://hooks.slack.com/services/T0ABCD123/B0EFGH45678/abcdefghijklmnopqrstuvwx",
        "https://hooks.slack.com/services/T0ABCD123/B0EFGH45678/abcdefghijklmnopqrstuvwx",
        False,
    ),  # fmt: skip
    (
        "bot_token: xoxb-123456789012-1234567890123-aBcDeFgHiJkLmNoPqRsTuVwX",
        "xoxb-123456789012-1234567890123-aBcDeFgHiJkLmNoPqRsTuVwX",
        False,
    ),  # fmt: skip
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        False,
    ),  # fmt: skip
    (
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=" + "Ml9U" * 21 + "dQ==;",
        "Ml9U" * 21 + "dQ==",
        False,
    ),  # fmt: skip
    (
        "git clone https://x-access-token:ghs_16C7e42F292c6912E7710c838347Ae178B4a@github.com/o/r",
        "ghs_16C7e42F292c6912E7710c838347Ae178B4a",
        False,
    ),  # fmt: skip
    # private keys in any container
    (
        f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----",
        PEM_BODY,
        False,
    ),
    (
        '{"private_key": "-----BEGIN PRIVATE KEY-----\\n'
        + PEM_BODY.replace("\n", "\\n")
        + '\\n-----END PRIVATE KEY-----\\n"}',
        PEM_BODY.replace("\n", "\\n"),
        False,
    ),  # fmt: skip
    (
        "tls.key: |\n    -----BEGIN EC PRIVATE KEY-----\n    "
        + PEM_BODY.replace("\n", "\n    ")
        + "\n    -----END EC PRIVATE KEY-----\n",
        PEM_BODY.replace("\n", "\n    "),
        False,
    ),  # fmt: skip
    (
        "Private-Lines: 1\nbc4JYbjn9Zdh8cp7cf6Magf6se+YsLxTT1C90u2H9ybPk9kBDdmrNxbyKs1m3JM1\n"
        "Private-MAC: cc4f81da60da537acaa567c3c79059baade5b27bb61a",
        "bc4JYbjn9Zdh8cp7cf6Magf6se+YsLxTT1C90u2H9ybPk9kBDdmrNxbyKs1m3JM1",
        False,
    ),  # fmt: skip
    (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF" + "x9Y" * 20 + "\n=Ab3c\n"
        "-----END PGP PRIVATE KEY BLOCK-----",
        "lQOYBF" + "x9Y" * 20,
        False,
    ),  # fmt: skip
    (
        "    client-key-data: "
        + base64.b64encode(
            f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----\n".encode()
        ).decode(),
        base64.b64encode(
            f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----\n".encode()
        ).decode(),
        False,
    ),  # fmt: skip
]


@pytest.mark.parametrize(("text", "value", "in_code"), POSITIVES)
def test_secret_is_covered(text, value, in_code):
    assert _covered(text, value, in_code), text[:80]


def _cert_b64() -> str:
    rng = random.Random(1)
    body = base64.b64encode(rng.randbytes(600)).decode()
    pem = f"-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIE{body[:600]}\n-----END CERTIFICATE-----\n"
    return base64.b64encode(pem.encode()).decode()


CERT_B64 = _cert_b64()
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + random.Random(2).randbytes(200)).decode()
PUBLIC_PEM = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + (
    "\nq8Zt3Vb9Lk2Xw7Yp1Rm4Ns6Qe0Ju5Hc8Ga3Fd7Sb2Vx9Lz4Mk1Pn6Qr0Ts5Uw" * 4
) + "\n-----END PUBLIC KEY-----"  # fmt: skip
SSH_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIwIh8caKla38Ow/Xc3xRSuOK4YfYLsq5pJkL3mQ9xZ4 ci@build"

NEGATIVES = [
    (PUBLIC_PEM, PUBLIC_PEM, False),
    (
        '{"public_key": "' + PUBLIC_PEM.replace("\n", "\\n") + '"}',
        PUBLIC_PEM.replace("\n", "\\n"),
        False,
    ),  # fmt: skip
    (SSH_PUB + "\n", SSH_PUB, False),
    ("    client-certificate-data: " + CERT_B64, CERT_B64, False),
    (
        "github.com/pkg/errors v0.9.1 h1:FEBLx1zS214owpjy7qsBeixbURkuhQAwrK5UwLGTwt4=",
        "h1:FEBLx1zS214owpjy7qsBeixbURkuhQAwrK5UwLGTwt4=",
        False,
    ),  # fmt: skip
    (
        '"integrity": "sha512-' + "Pq7+1b1K4Wc9dXy3ZvT8" * 4 + 'n2L0mR5s=="',
        "sha512-" + "Pq7+1b1K4Wc9dXy3ZvT8" * 4 + "n2L0mR5s==",
        False,
    ),  # fmt: skip
    (
        '<script integrity="sha384-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC">',
        "sha384-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC",
        False,
    ),  # fmt: skip
    (
        '{file = "x.whl", hash = "sha256:2be8daddbb82756f7d1f2c7ece706aadcb284bf6ab6d769ea695cc3ed6016743"}',
        "2be8daddbb82756f7d1f2c7ece706aadcb284bf6ab6d769ea695cc3ed6016743",
        False,
    ),  # fmt: skip
    (
        "image: nginx@sha256:2be8daddbb82756f7d1f2c7ece706aadcb284bf6ab6d769ea695cc3ed6016743",
        "2be8daddbb82756f7d1f2c7ece706aadcb284bf6ab6d769ea695cc3ed6016743",
        False,
    ),  # fmt: skip
    ('"avatar": "data:image/png;base64,' + PNG_B64 + '"', PNG_B64, False),
    ('"content": "' + PNG_B64 + '"', PNG_B64, False),
    (
        "request 7c9e6679-7425-40de-944b-e07fc1f90ae7 done",
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        False,
    ),  # fmt: skip
    ("DB_PASSWORD=${DB_PASSWORD}", "${DB_PASSWORD}", False),
    ("password: <your-password>", "<your-password>", False),
    ("SECRET_KEY=changeme", "changeme", False),
    ("api_key: YOUR_API_KEY_HERE", "YOUR_API_KEY_HERE", False),
    ("password: {{ .Values.db.password }}", "{{ .Values.db.password }}", False),
    ("masked as password=****.", "****", False),
    (
        "token looks like `ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx`",
        "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        False,
    ),  # fmt: skip
    ("e.g. postgres://user:password@localhost:5432/app", "password", False),
    ("curl -H 'Authorization: Bearer $CI_JOB_TOKEN' https://ci", "$CI_JOB_TOKEN", False),
    ("The password is required for every login and is stored hashed.", "required", False),
    ("Password policy: minimum length 14, rotation every 90 days.", "minimum", False),
    ("A client asks for a token with its credentials and sends it.", "with its", False),
    ("and to keep the passphrase confidential.</p>", "confidential", False),
    ("Basic POSIX-compliant behaviour, see Basic customization.", "POSIX-compliant", False),
    ("man3/login.3 man3/logout.3", "logout.3", False),
    ("  cvs://:pserver:anoncvs@sourceware.org:/cvs/src", "pserver:anoncvs", False),
    (
        "[credentials]: https://github.com/nodejs/node-core-utils#setting-up",
        "https://github.com",
        False,
    ),  # fmt: skip
    (
        'resource "aws_db_instance" "main" {\n  password = var.db_password\n}',
        "var.db_password",
        False,
    ),  # fmt: skip
    ("password = args.password", "args.password", True),
    ("password = os.environ['PGPASSWORD']", "os.environ", True),
    ("api_key = os.getenv('API_KEY', '')", "os.getenv", True),
    ("secret = settings.SECRET_KEY", "settings.SECRET_KEY", True),
    ("credentials = '{0}:{1}'.format(user, pw)", "{0}:{1}", True),
    ("TokenInfo = namedtuple('TokenInfo', 'type string start end line')", "type string", True),
    (
        "AUTH_PASSWORD_VALIDATORS = [{'NAME': 'django.contrib.auth.password_validation.X'}]",
        "django.contrib",
        True,
    ),  # fmt: skip
    ("PASSWORD_RESET_TIMEOUT = 259200", "259200", True),
    (
        "version 1.24.3 released; commit 3f786850e387550fdab836ed7e6dc881de23001b",
        "3f786850e387550fdab836ed7e6dc881de23001b",
        False,
    ),  # fmt: skip
    ("| --- | " + "-" * 120 + " |", "-" * 120, False),
    (
        "see libs/numeric/odeint/include/boost/numeric/odeint/stepper/generation_runge_kutta.hpp",
        "libs/numeric",
        False,
    ),  # fmt: skip
]


@pytest.mark.parametrize(("text", "value", "in_code"), NEGATIVES)
def test_public_material_is_kept(text, value, in_code):
    assert not _touched(text, value, in_code), text[:80]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("${DB_PASSWORD}", True), ("<password>", True), ("****", True), ("changeme", True),
     ("YOUR_API_TOKEN", True), ("{password}", True), ("$PGPASSWORD", True),
     ("{vb681ZlSmqP6oeBS}", False), ("$cwBfIJyz6kXsS3U", False), ("Summer2024!", False)],
)  # fmt: skip
def test_placeholders(value, expected):
    assert is_placeholder(value) is expected


def test_generated_passwords_in_settings_are_all_caught():
    """Django's own key alphabet (punctuation included) and random passwords with symbols,
    in quoted and unquoted settings: every one is covered."""
    rng = random.Random(0)
    django = "abcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*(-_=+)"
    symbols = string.ascii_letters + string.digits + "!#$%&*+-=?@^_~"
    for _ in range(200):
        key = "".join(rng.choice(django) for _ in range(50))
        pw = "".join(rng.choice(symbols) for _ in range(rng.randint(10, 24)))
        assert _covered(f"SECRET_KEY = '{key}'\n", key, True)
        assert _covered(f"DB_PASSWORD={pw}\n", pw)
        assert _covered(f'password: "{pw}"\n', pw)
