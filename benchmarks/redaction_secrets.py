"""The secret half of the redaction benchmark's corpus: configs, .env files, settings modules,
connection strings, key files, exports, tickets, mail and memos with planted secrets of 50+
kinds (benchmarks/redaction_secret_configs.py, redaction_secret_documents.py), hard negatives
(public keys, lock-file and integrity hashes, digests, placeholders…) and control text, all
with seeded random values. Used by benchmarks/redaction.py."""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Callable

import redaction_secret_configs as configs
import redaction_secret_documents as documents
from redaction_cases import Case
from redaction_values import Keep, b64, doc_ip, hexs, public_pem, render, sha_hex, ssh_public

SECRET_SCENARIOS: list[Callable[[random.Random], Case]] = [
    configs.dotenv,
    configs.yaml_app_config,
    configs.ini_config,
    configs.toml_config,
    configs.properties,
    configs.docker_compose,
    configs.django_settings,
    configs.django_getenv_default,
    configs.flask_config,
    configs.python_client,
    configs.jdbc_odbc,
    configs.connection_urls_in_code,
    configs.kubeconfig,
    configs.k8s_secret_yaml,
    configs.gcp_service_account,
    configs.azure_storage,
    configs.aws_credentials_file,
    configs.aws_credentials_csv,
    configs.npmrc,
    configs.pypirc,
    configs.netrc,
    documents.pem_key_file,
    documents.openssh_key_file,
    documents.putty_key_file,
    documents.pgp_key_file,
    documents.runbook_curl,
    documents.http_log,
    documents.slack_and_tokens_config,
    documents.mail_with_token,
    documents.memo_passwords,
    documents.ticket_export,
    documents.misc_provider_keys,
    documents.php_config,
    documents.go_dsn,
    documents.pgpass,
    documents.sql_migration,
    documents.redis_conf,
    documents.terraform,
    documents.java_xml,
    documents.runbook_cli,
    documents.memo_other_languages,
]


# ---- hard negatives: public material that looks like secrets -----------------------------


def go_sum(rng: random.Random) -> Case:
    mods = ["github.com/pkg/errors", "golang.org/x/sys", "github.com/stretchr/testify",
            "google.golang.org/grpc", "github.com/spf13/cobra"]  # fmt: skip
    lines, slots = [], {}
    for i, mod in enumerate(rng.sample(mods, 4)):
        ver = f"v{rng.randint(0, 1)}.{rng.randint(0, 60)}.{rng.randint(0, 9)}"
        slots[f"a{i}"] = Keep("h1:" + b64(rng, 32), "go_sum_hash")
        slots[f"b{i}"] = Keep("h1:" + b64(rng, 32), "go_sum_hash")
        lines.append(f"{mod} {ver} «a{i}»\n{mod} {ver}/go.mod «b{i}»\n")
    return render("".join(lines), "go.sum", "config", **slots)


def package_lock(rng: random.Random) -> Case:
    pkgs, slots = {}, {}
    for i, name in enumerate(rng.sample(["lodash", "react", "express", "debug", "ms", "chalk"], 4)):
        ver = f"{rng.randint(1, 18)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
        pkgs[f"node_modules/{name}"] = {
            "version": ver,
            "resolved": f"https://registry.npmjs.org/{name}/-/{name}-{ver}.tgz",
            "integrity": f"«i{i}»",
        }
        slots[f"i{i}"] = Keep(f"sha512-{b64(rng, 64)}", "npm_integrity")
    doc = {"name": "web", "lockfileVersion": 3, "requires": True, "packages": pkgs}
    return render(
        json.dumps(doc, indent=2, ensure_ascii=False) + "\n", "package-lock.json", "config", **slots
    )


def poetry_lock(rng: random.Random) -> Case:
    return render(
        '[[package]]\nname = "requests"\nversion = "«ver»"\ndescription = "Python HTTP for '
        'Humans."\noptional = false\npython-versions = ">=3.8"\nfiles = [\n'
        '    {file = "requests-2.31.0-py3-none-any.whl", hash = "sha256:«h1»"},\n'
        '    {file = "requests-2.31.0.tar.gz", hash = "sha256:«h2»"},\n]\n\n[metadata]\n'
        'lock-version = "2.0"\ncontent-hash = "«ch»"\n',
        "poetry.lock",
        "config",
        ver=Keep(f"2.{rng.randint(20, 32)}.{rng.randint(0, 3)}", "version"),
        h1=Keep(sha_hex(rng), "lock_hash"),
        h2=Keep(sha_hex(rng), "lock_hash"),
        ch=Keep(sha_hex(rng), "lock_hash"),
    )


def requirements_hashes(rng: random.Random) -> Case:
    return render(
        "certifi==2024.2.2 \\\n    --hash=sha256:«h1» \\\n    --hash=sha256:«h2»\n"
        "idna==3.6 \\\n    --hash=sha256:«h3»\n",
        "requirements.lock.txt",
        "text",
        h1=Keep(sha_hex(rng), "lock_hash"),
        h2=Keep(sha_hex(rng), "lock_hash"),
        h3=Keep(sha_hex(rng), "lock_hash"),
    )


def sri_html(rng: random.Random) -> Case:
    return render(
        '<!doctype html>\n<html>\n<head>\n  <link rel="stylesheet" href="https://cdn.jsdelivr.net'
        '/npm/bootstrap@5.3.2/dist/css/bootstrap.min.css" integrity="«css»" '
        'crossorigin="anonymous">\n  <script src="https://code.jquery.com/jquery-3.7.1.min.js" '
        'integrity="«js»" crossorigin="anonymous"></script>\n</head>\n<body><p>Status page'
        "</p></body>\n</html>\n",
        rng.choice(["index.html", "templates/base.html"]),
        "html",
        css=Keep(f"sha384-{b64(rng, 48)}", "sri_integrity"),
        js=Keep(f"sha256-{b64(rng, 32)}", "sri_integrity"),
    )


def ssh_public_files(rng: random.Random) -> Case:
    if rng.random() < 0.5:
        return render("«k»\n", rng.choice(["id_ed25519.pub", "deploy.pub"]), "config",
                      k=Keep(ssh_public(rng), "ssh_public_key"))  # fmt: skip
    keys = {f"k{i}": Keep(ssh_public(rng), "ssh_public_key") for i in range(3)}
    return render("«k0»\n«k1»\n«k2»\n", "authorized_keys", "config", **keys)


def pem_public_file(rng: random.Random) -> Case:
    return render("«k»\n", rng.choice(["cert.pem", "ca.crt", "public.pem"]), "config",
                  k=Keep(public_pem(rng), "pem_public"))  # fmt: skip


def pem_public_in_json(rng: random.Random) -> Case:
    pem = public_pem(rng)
    return render(
        '{\n  "issuer": "https://auth.acme.io",\n  "public_key": "«k»",\n  "alg": "RS256"\n}\n',
        "jwt-verify.json",
        "config",
        k=Keep(json.dumps(pem)[1:-1], "pem_public"),
    )


def digests_and_ids(rng: random.Random) -> Case:
    return render(
        "# Release notes «ver»\n\nBuilt from commit «sha» and published as "
        "`ghcr.io/acme/api@sha256:«dig»`.\n\nChecksums:\n\n```\n«sum»  api-«ver»-linux-amd64.tar.gz"
        "\n```\n\nTracking issue «uuid». Staging answers on «ip»; mail «mail» for access.\n",
        rng.choice(["CHANGELOG.md", "docs/releases.md"]),
        "markdown",
        ver=Keep(f"{rng.randint(1, 5)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}", "version"),
        sha=Keep(hexs(rng, 40), "git_sha"),
        dig=Keep(sha_hex(rng), "docker_digest"),
        sum=Keep(sha_hex(rng), "checksum"),
        uuid=Keep(str(uuid.UUID(int=rng.getrandbits(128), version=4)), "uuid"),
        ip=Keep(doc_ip(rng), "documentation_ip"),
        mail=Keep(f"{rng.choice(['support', 'releases'])}@example.org", "example_email"),
    )


def base64_fixtures(rng: random.Random) -> Case:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(300)).decode()
    pdf = base64.b64encode(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + rng.randbytes(240)).decode()
    return render(
        '{\n  "user": {"id": «uid», "name": "Test User", "avatar": "data:image/png;base64,«png»"},'
        '\n  "attachment": {"filename": "invoice.pdf", "content_type": "application/pdf", '
        '"content": "«pdf»"},\n  "checksum": "«md5»"\n}\n',
        rng.choice(["tests/fixtures/user.json", "fixtures/invoice_payload.json"]),
        "config",
        uid=str(rng.randint(1, 9999)),
        png=Keep(png, "base64_fixture"),
        pdf=Keep(pdf, "base64_fixture"),
        md5=Keep(hexs(rng, 32), "checksum"),
    )


def placeholders_in_docs(rng: random.Random) -> Case:
    return render(
        "## Configuration\n\nSet the database password in the environment, never in the file:\n\n"
        "```yaml\ndatabase:\n  password: «p1»\n  api_key: «p2»\n```\n\n"
        "Or in a connection string: `postgres://app:«p3»@db:5432/app`. The helm chart reads "
        "`password: «p4»`. Masked in logs as `password=«p5»`. A token looks like «p6».\n",
        rng.choice(["README.md", "docs/configuration.md"]),
        "markdown",
        p1=Keep(rng.choice(["${DB_PASSWORD}", "<your-password>", "changeme"]), "placeholder"),
        p2=Keep(rng.choice(["<YOUR_API_KEY>", "YOUR_API_KEY_HERE", "${API_KEY}"]), "placeholder"),
        p3=Keep(rng.choice(["<password>", "${PGPASSWORD}", "password", "secret"]), "placeholder"),
        p4=Keep("{{ .Values.db.password }}", "placeholder"),
        p5=Keep(rng.choice(["****", "********", "[REDACTED]"]), "placeholder"),
        p6=Keep(
            rng.choice(["`ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx`", "`sk_live_...`"]),
            "placeholder",
        ),  # fmt: skip
    )


def code_reading_secrets(rng: random.Random) -> Case:
    return render(
        "import os\n\n\ndef connect(cfg):\n    password = cfg.get('password') or os.environ['PGPASSWORD']\n"
        "    token = get_token(cfg['token_url'])\n    api_key = os.getenv('API_KEY', '')\n"
        "    secret = settings.SECRET_KEY\n    return Client(user=cfg['user'], password=password,"
        " token=token, api_key=api_key, secret=secret)\n\n\n"
        "def hash_password(raw: str, salt: bytes) -> str:\n"
        "    return hashlib.pbkdf2_hmac('sha256', raw.encode(), salt, «iters»).hex()\n\n\n"
        "TEST_UUID = '«uuid»'\nEMPTY_SHA256 = '«empty»'\n",
        rng.choice(["client/auth.py", "lib/db.py"]),
        "code",
        iters=str(rng.choice([100_000, 310_000, 600_000])),
        uuid=Keep(str(uuid.UUID(int=rng.getrandbits(128), version=4)), "uuid"),
        empty=Keep("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "checksum"),
    )


NEGATIVE_SCENARIOS: list[Callable[[random.Random], Case]] = [
    go_sum, package_lock, poetry_lock, requirements_hashes, sri_html, ssh_public_files,
    pem_public_file, pem_public_in_json,
    digests_and_ids, base64_fixtures, placeholders_in_docs, code_reading_secrets, configs.env_example,
]  # fmt: skip


# ---- control text: documentation prose and code with nothing to remove ------------------

_PROSE = [
    "Authentication uses short-lived tokens issued by the identity service. A client asks for "
    "a token with its credentials and sends it in the Authorization header; the gateway checks "
    "the signature and the expiry before the request reaches a service.",
    "Passwords are never stored in clear text: the service keeps a salted hash computed with "
    "Argon2id, and a reset link expires after one hour. Administrators cannot read a password, "
    "only force a reset.",
    "To rotate an API key, create the new key first, deploy it to every consumer, then revoke "
    "the old one. Keys are scoped to a project and can be limited to read-only access.",
    "The backup job runs nightly at 02:00 and keeps fourteen daily and eight weekly snapshots. "
    "Restores are tested every quarter on a scratch cluster.",
    "Secrets belong in the vault, not in the repository. The deploy pipeline injects them as "
    "environment variables at start-up, and the application reads them once.",
]
_CODE = [
    "def parse_version(text: str) -> tuple[int, ...]:\n    return tuple(int(p) for p in "
    "text.split('.'))\n\n\nclass TokenBucket:\n    def __init__(self, rate: float, burst: int):\n"
    "        self.rate, self.tokens, self.burst = rate, burst, burst\n",
    'package main\n\nimport "fmt"\n\nfunc main() {\n\tsecretCount := 0\n\tfor _, key := range '
    "keys {\n\t\tif key.Private {\n\t\t\tsecretCount++\n\t\t}\n\t}\n\tfmt.Println(secretCount)\n}\n",
    "export function passwordStrength(password) {\n  let score = 0;\n  if (password.length >= 12)"
    " score += 1;\n  if (/[A-Z]/.test(password)) score += 1;\n  return score;\n}\n",
    "SELECT u.id, u.email, count(o.id) AS orders\nFROM users u LEFT JOIN orders o ON o.user_id = "
    "u.id\nWHERE u.created_at >= '2024-01-01'\nGROUP BY u.id, u.email;\n",
]


def control_cases(rng: random.Random) -> list[Case]:
    out = []
    for i, para in enumerate(_PROSE):
        extra = rng.choice(_PROSE)
        out.append(Case(f"{para}\n\n{extra}\n", f"docs/guide_{i}.md", "markdown"))
    names = ["util/version.py", "cmd/count.go", "web/strength.js", "reports/orders.sql"]
    out.extend(Case(code, name, "code") for name, code in zip(names, _CODE, strict=True))
    return out


def cases(seed: int = 0, per_scenario: int = 4) -> list[Case]:
    """The secret corpus: every scenario `per_scenario` times with fresh random values,
    then the control text."""
    rng = random.Random(seed)
    out = []
    for scenario in SECRET_SCENARIOS + NEGATIVE_SCENARIOS:
        for _ in range(per_scenario):
            out.append(scenario(rng))
    out.extend(control_cases(rng))
    return out
