"""Secret scenarios, part 2: key files, runbooks, HTTP traces, mail, memos, tickets, code
and configs of other stacks (PHP, Go, SQL, redis, Terraform, Java XML), each with seeded
values. Collected by benchmarks/redaction_secrets.py."""

from __future__ import annotations

import base64
import json
import random
import string
import textwrap
import uuid

from redaction_cases import Case
from redaction_values import (
    ALNUM,
    B64,
    B64URL,
    HOSTS,
    USERS,
    Keep,
    Secret,
    b64,
    hexs,
    jwt,
    openssh_private,
    password,
    pem_body,
    private_pem,
    rand,
    render,
)  # fmt: skip


def pem_key_file(rng: random.Random) -> Case:
    return render("«k»\n", rng.choice(["server.key", "tls/private.pem"]), "config",
                  k=Secret(private_pem(rng), "private_key_pem"))  # fmt: skip


def openssh_key_file(rng: random.Random) -> Case:
    return render("«k»\n", rng.choice(["id_ed25519", "deploy_key"]), "config",
                  k=Secret(openssh_private(rng), "openssh_private_key"))  # fmt: skip


def putty_key_file(rng: random.Random) -> Case:
    pub = "\n".join(textwrap.wrap("AAAAC3NzaC1lZDI1NTE5AAAAI" + b64(rng, 40)[:43], 64))
    priv = "\n".join(textwrap.wrap(b64(rng, 48), 64))
    return render(
        "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: eddsa-key-20240301\n"
        "Public-Lines: 1\n«pub»\n«priv»\n",
        "putty.ppk",
        "config",
        pub=pub,
        priv=Secret(
            f"Private-Lines: 1\n{priv}\nPrivate-MAC: {hexs(rng, 64)}", "putty_private_key"
        ),  # fmt: skip
    )


def pgp_key_file(rng: random.Random) -> Case:
    body = pem_body(rng, "lQOYBF", 900)
    checksum = "=" + rand(rng, B64, 4)
    return render(
        "«k»\n",
        rng.choice(["secring.asc", "release-signing.key.asc"]),
        "config",
        k=Secret(
            f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{body}\n{checksum}\n"
            "-----END PGP PRIVATE KEY BLOCK-----",
            "pgp_private_key",
        ),
    )


def runbook_curl(rng: random.Random) -> Case:
    return render(
        "# Deploy runbook\n\n1. Trigger the pipeline:\n\n```sh\ncurl -X POST "
        '-H "Authorization: Bearer «tok»" \\\n  -H "Content-Type: application/json" '
        "https://ci.acme.lan/api/v4/projects/42/trigger\n```\n\n2. Check the registry:\n\n"
        "```sh\ncurl -u «user»:«pw» https://registry.acme.lan/v2/_catalog\n"
        "curl -H 'Authorization: Bearer $CI_JOB_TOKEN' https://ci.acme.lan/api/v4/jobs\n```\n\n"
        '3. Notify Slack: `curl -X POST --data \'{"text":"done"}\' «hook»`\n\n'
        "4. Dump the database: `mysqldump -u «user» --password=«dpw» shop > shop.sql`\n",
        rng.choice(["docs/runbook.md", "RUNBOOK.md", "ops/deploy.md"]),
        "markdown",
        tok=Secret(
            rng.choice([jwt(rng), f"glpat-{rand(rng, B64URL, 20)}", rand(rng, ALNUM, 40)]),
            "bearer_token",
        ),  # fmt: skip
        user=rng.choice(USERS),
        pw=Secret(password(rng).replace("'", "").replace(" ", ""), "curl_user_password"),
        hook=Secret(
            f"https://hooks.slack.com/services/T{rand(rng, string.ascii_uppercase + string.digits, 8)}"
            f"/B{rand(rng, string.ascii_uppercase + string.digits, 10)}/{rand(rng, ALNUM, 24)}",
            "slack_webhook",
        ),
        dpw=Secret(password(rng).replace("'", ""), "cli_password"),
    )


def http_log(rng: random.Random) -> Case:
    basic = base64.b64encode(f"{rng.choice(USERS)}:{password(rng)}".encode()).decode()
    return render(
        "> GET /api/v1/orders HTTP/1.1\n> Host: api.acme.io\n> Authorization: Basic «basic»\n"
        "> User-Agent: curl/8.5.0\n> Accept: */*\n>\n< HTTP/1.1 200 OK\n"
        '< X-Request-Id: «rid»\n< ETag: "«etag»"\n<\n'
        "> POST /v1/charges HTTP/1.1\n> X-Api-Key: «apikey»\n",
        rng.choice(["debug.log", "notes/http-trace.txt"]),
        "text",
        basic=Secret(basic, "basic_auth_header"),
        rid=Keep(str(uuid.UUID(int=rng.getrandbits(128), version=4)), "uuid"),
        etag=Keep(hexs(rng, 40), "etag_hash"),
        apikey=Secret(hexs(rng, 40), "named_hex_token"),
    )


def slack_and_tokens_config(rng: random.Random) -> Case:
    return render(
        "notifications:\n  slack:\n    webhook_url: «hook»\n    bot_token: «bot»\n"
        "  channel: '#deploys'\nintegrations:\n  github:\n    token: «gh»\n  gitlab:\n"
        "    private_token: «gl»\n  openai:\n    api_key: «oa»\n  google:\n    maps_key: «goog»\n",
        rng.choice(["integrations.yml", "bot/config.yaml"]),
        "config",
        hook=Secret(
            f"https://hooks.slack.com/services/T{rand(rng, string.ascii_uppercase + string.digits, 8)}"
            f"/B{rand(rng, string.ascii_uppercase + string.digits, 10)}/{rand(rng, ALNUM, 24)}",
            "slack_webhook",
        ),
        bot=Secret(
            f"xoxb-{rng.randint(10**11, 10**12)}-{rng.randint(10**12, 10**13)}-{rand(rng, ALNUM, 24)}",
            "slack_token",
        ),
        gh=Secret(f"github_pat_{rand(rng, ALNUM, 22)}_{rand(rng, ALNUM, 59)}", "github_token"),
        gl=Secret(f"glpat-{rand(rng, B64URL, 20)}", "gitlab_token"),
        oa=Secret(f"sk-proj-{rand(rng, B64URL, 48)}", "openai_key"),
        goog=Secret(f"AIza{rand(rng, B64URL, 35)}", "google_api_key"),
    )


def mail_with_token(rng: random.Random) -> Case:
    tok = rng.choice([hexs(rng, 40), hexs(rng, 64), rand(rng, ALNUM, 32)])
    return render(
        "From: «who» <«who»@acme.io>\nTo: ops-team@acme.io\nSubject: access for the new "
        "contractor\nDate: Tue, 12 Mar 2024 09:14:02 +0100\n\nHi all,\n\nI set up the account "
        "for the contractor. For the metrics API use this token: «tok»\n\nThe VPN password is "
        "«vpn» until Friday, please ask them to change it. The wiki passcode «code» stays the "
        "same.\n\nThanks,\n«who»\n",
        f"mail/{rng.randint(1000, 9999)}.eml",
        "mail",
        who=rng.choice(["dana", "lee", "morgan", "sam"]),
        tok=Secret(tok, "mail_token"),
        vpn=Secret(password(rng), "prose_password"),
        code=Secret(str(rng.randint(100000, 99999999)), "prose_passcode"),
    )


def memo_passwords(rng: random.Random) -> Case:
    return render(
        "Meeting notes — infrastructure sync\n\n* Staging box was rebuilt; the root password "
        "is now «pw1» (rotate after the audit).\n* Wi-Fi for the lab — SSID acme-lab, pw: «pw2»\n"
        "* The shared mailbox password was changed to «pw3».\n* Password policy: minimum "
        "length 14, rotation every 90 days. The password is required for every login and is "
        "stored hashed.\n* Next sync on «date».\n",
        rng.choice(["notes/infra-sync.txt", "memo.txt", "docs/meeting-2024-03.md"]),
        "text",
        pw1=Secret(password(rng), "prose_password"),
        pw2=Secret(password(rng), "prose_password"),
        pw3=Secret(password(rng), "prose_password"),
        date=f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
    )


def ticket_export(rng: random.Random) -> Case:
    rows = [
        {"id": rng.randint(1000, 9999), "title": "Login broken on staging",
         "body": "Steps: log in as «user» with password «pw» -> 500 error."},
        {"id": rng.randint(1000, 9999), "title": "Rotate leaked key",
         "body": "Customer pasted their live key «sk» in the chat, please rotate."},
        {"id": rng.randint(1000, 9999), "title": "Upgrade lodash",
         "body": "Bump lodash to «ver» (integrity «integ»)."},
    ]  # fmt: skip
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    return render(
        text,
        rng.choice(["exports/tickets.jsonl", "jira-export.jsonl"]),
        "records",
        user=rng.choice(USERS),
        pw=Secret(password(rng).replace('"', "").replace("\\", ""), "prose_password"),
        sk=Secret(f"rk_live_{rand(rng, ALNUM, 24)}", "stripe_secret_key"),
        ver=Keep(f"4.17.{rng.randint(10, 21)}", "version"),
        integ=Keep(f"sha512-{b64(rng, 64)}", "npm_integrity"),
    )


def misc_provider_keys(rng: random.Random) -> Case:
    return render(
        "# Third-party credentials used by the notifier (prod)\n"
        "export TWILIO_API_KEY=SK«twk»\nexport TWILIO_API_SECRET=«tws»\n"
        "export SENDGRID_API_KEY='«sg»'\nexport NPM_TOKEN=«npm»\n"
        "export HF_TOKEN=«hf»\nexport SHOPIFY_ACCESS_TOKEN=«shop»\n"
        "export BUILD_ID=«build»\n",
        rng.choice(["deploy/secrets.sh", "env.sh"]),
        "config",
        twk=Secret(hexs(rng, 32), "twilio_api_key"),
        tws=Secret(rand(rng, ALNUM, 32), "twilio_api_secret"),
        sg=Secret(f"SG.{rand(rng, B64URL, 22)}.{rand(rng, B64URL, 43)}", "sendgrid_api_key"),
        npm=Secret(f"npm_{rand(rng, ALNUM, 36)}", "npm_token"),
        hf=Secret(f"hf_{rand(rng, string.ascii_letters, 34)}", "huggingface_token"),
        shop=Secret(f"shpat_{hexs(rng, 32)}", "shopify_token"),
        build=Keep(str(rng.randint(10**6, 10**7)), "build_number"),
    )


def php_config(rng: random.Random) -> Case:
    return render(
        "<?php\n/** The name of the database for WordPress */\ndefine( 'DB_NAME', 'wordpress' );\n"
        "define( 'DB_USER', '«user»' );\ndefine( 'DB_PASSWORD', '«pw»' );\n"
        "define( 'DB_HOST', '«host»' );\ndefine( 'AUTH_KEY', '«ak»' );\n\n"
        "return [\n    'mysql' => [\n        'username' => env('DB_USERNAME', 'forge'),\n"
        "        'password' => env('DB_PASSWORD', '«dflt»'),\n    ],\n"
        "    'mail_password' => '«mail»',\n];\n",
        rng.choice(["wp-config.php", "config/database.php"]),
        "code",
        user=rng.choice(USERS),
        pw=Secret(password(rng).replace("'", ""), "php_define_password"),
        host=rng.choice(HOSTS),
        ak=Secret(rand(rng, ALNUM + "!#$%&*+-=?@^_~|<>", 64), "php_define_password"),
        dflt=Secret(password(rng).replace("'", ""), "env_default_password"),
        mail=Secret(password(rng).replace("'", ""), "config_password"),
    )


def go_dsn(rng: random.Random) -> Case:
    return render(
        'package store\n\nimport (\n\t"database/sql"\n\n\t_ "github.com/go-sql-driver/mysql"\n)\n\n'
        'const dsn = "«user»:«pw»@tcp(«host»:3306)/orders?parseTime=true"\n\n'
        'func Open() (*sql.DB, error) {\n\treturn sql.Open("mysql", dsn)\n}\n',
        rng.choice(["internal/store/db.go", "db.go"]),
        "code",
        user=rng.choice(USERS),
        pw=Secret(password(rng).replace('"', "").replace("@", "").replace("/", ""), "go_mysql_dsn"),
        host=rng.choice(HOSTS),
    )


def pgpass(rng: random.Random) -> Case:
    lines = {f"p{i}": Secret(password(rng).replace(":", ""), "pgpass_password") for i in range(3)}
    return render(
        "# hostname:port:database:username:password\n"
        f"{rng.choice(HOSTS)}:5432:app:{rng.choice(USERS)}:«p0»\n"
        f"*:*:reporting:{rng.choice(USERS)}:«p1»\n"
        f"replica.internal:6432:*:{rng.choice(USERS)}:«p2»\n",
        rng.choice([".pgpass", "pgpass.conf"]),
        "config",
        **lines,
    )


def sql_migration(rng: random.Random) -> Case:
    return render(
        "-- 0042_service_accounts.sql\nCREATE ROLE reporting LOGIN PASSWORD '«pg»';\n"
        "ALTER USER «user» WITH PASSWORD '«pg2»';\nCREATE USER 'etl'@'%' IDENTIFIED BY '«my»';\n"
        "GRANT SELECT ON shop.* TO 'etl'@'%';\n"
        "CREATE TABLE users (id serial PRIMARY KEY, email text, password_hash text NOT NULL);\n",
        rng.choice(["migrations/0042_service_accounts.sql", "db/init.sql"]),
        "code",
        user=rng.choice(USERS),
        pg=Secret(password(rng).replace("'", ""), "sql_password"),
        pg2=Secret(password(rng).replace("'", ""), "sql_password"),
        my=Secret(password(rng).replace("'", ""), "sql_password"),
    )


def redis_conf(rng: random.Random) -> Case:
    return render(
        "bind 127.0.0.1 ::1\nprotected-mode yes\nport 6379\n# requirepass foobared\n"
        "requirepass «pw»\nmasterauth «pw2»\nmaxmemory 2gb\nmaxmemory-policy allkeys-lru\n",
        rng.choice(["redis.conf", "deploy/redis/redis.conf"]),
        "config",
        pw=Secret(rand(rng, ALNUM, 32), "redis_conf_password"),
        pw2=Secret(password(rng), "redis_conf_password"),
    )


def terraform(rng: random.Random) -> Case:
    return render(
        'variable "region" {\n  default = "eu-west-1"\n}\n\nvariable "db_password" {\n'
        '  type      = string\n  sensitive = true\n  default   = "«pw»"\n}\n\n'
        'resource "aws_db_instance" "main" {\n  engine   = "postgres"\n  username = "«user»"\n'
        '  password = var.db_password\n}\n\nprovider "datadog" {\n  api_key = "«dd»"\n}\n',
        rng.choice(["main.tf", "infra/rds.tf"]),
        "config",
        pw=Secret(password(rng).replace('"', ""), "terraform_default"),
        user=rng.choice(USERS),
        dd=Secret(hexs(rng, 32), "named_hex_token"),
    )


def java_xml(rng: random.Random) -> Case:
    return render(
        '<?xml version="1.0" encoding="UTF-8"?>\n<settings>\n  <servers>\n    <server>\n'
        "      <id>nexus-releases</id>\n      <username>«user»</username>\n"
        "      <password>«pw»</password>\n    </server>\n    <server>\n      <id>ci</id>\n"
        "      <password>${env.NEXUS_PASSWORD}</password>\n    </server>\n  </servers>\n"
        "</settings>\n<!-- hibernate.cfg.xml -->\n<hibernate-configuration><session-factory>\n"
        '  <property name="connection.username">«user»</property>\n'
        '  <property name="connection.password">«hpw»</property>\n'
        "</session-factory></hibernate-configuration>\n",
        rng.choice(["settings.xml", ".m2/settings.xml", "hibernate.cfg.xml"]),
        "config",
        user=rng.choice(USERS),
        pw=Secret(password(rng).replace("<", "").replace("&", ""), "xml_password"),
        hpw=Secret(password(rng).replace("<", "").replace("&", ""), "xml_password"),
    )


def runbook_cli(rng: random.Random) -> Case:
    return render(
        "# Restore from backup\n\n```\nmysql -h «host» -u «user» -p'«pw»' shop < backup.sql\n"
        "PGPASSWORD='«pg»' psql -h «host» -U «user» app\n"
        "docker login -u deploy --password-stdin registry.acme.lan < token.txt\n```\n",
        rng.choice(["docs/restore.md", "RESTORE.md"]),
        "markdown",
        host=rng.choice(HOSTS),
        user=rng.choice(USERS),
        pw=Secret(password(rng).replace("'", "").replace(" ", ""), "cli_password"),
        pg=Secret(password(rng).replace("'", ""), "cli_password"),
    )


def memo_other_languages(rng: random.Random) -> Case:
    return render(
        "Hallo Team,\n\ndas WLAN-Passwort für das Büro lautet jetzt: «de»\n\n"
        "Bonjour, le mot de passe du compte de test est «fr» (à changer).\n\n"
        "Hola: la contraseña del servidor es «es»\n\n"
        "Router: login admin / «slash» — please change it after setup.\n",
        rng.choice(["notes/office.txt", "mail/wifi.txt"]),
        "text",
        de=Secret(password(rng), "prose_password"),
        fr=Secret(password(rng), "prose_password"),
        es=Secret(password(rng), "prose_password"),
        slash=Secret(password(rng), "prose_password"),
    )
