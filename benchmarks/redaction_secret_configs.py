"""Secret scenarios, part 1: configuration files (.env, YAML, INI, TOML, .properties,
compose, settings modules, connection strings, kubeconfig, cloud and registry credentials),
each with seeded values. Collected by benchmarks/redaction_secrets.py."""

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
    B64URL,
    HOSTS,
    USERS,
    WORDS,
    Keep,
    Secret,
    aws_access_key_id,
    aws_secret,
    b64,
    django_key,
    doc_ip,
    hexs,
    jwt,
    password,
    private_pem,
    public_pem,
    rand,
    render,
    sha_hex,
    url_password,
)  # fmt: skip


def dotenv(rng: random.Random) -> Case:
    pw = url_password(rng)
    return render(
        "# local development settings, do not commit\n"
        "APP_ENV=production\nAPP_PORT=«port»\nLOG_LEVEL=info\n"
        "DATABASE_URL=postgres://«user»:«pw»@«host»:5432/«db»\n"
        "REDIS_URL=redis://:«rpw»@cache.internal:6379/0\n"
        "STRIPE_SECRET_KEY=«stripe»\n"
        "SENDGRID_API_KEY=«sg»\n"
        "JWT_SECRET=«jwt»\n"
        "SENTRY_DSN=https://«dsnpub»@o«org».ingest.sentry.io/«proj»\n"
        "RELEASE=«version»\n",
        rng.choice([".env", ".env.production", "deploy/.env.local"]),
        "config",
        port=str(rng.choice([3000, 8000, 8080])),
        user=rng.choice(USERS),
        pw=Secret(pw, "postgres_url_password"),
        host=rng.choice(HOSTS),
        db=rng.choice(["app", "billing", "orders"]),
        rpw=Secret(rand(rng, ALNUM, 32), "redis_url_password"),
        stripe=Secret(f"sk_live_{rand(rng, ALNUM, 24)}", "stripe_secret_key"),
        sg=Secret(f"SG.{rand(rng, B64URL, 22)}.{rand(rng, B64URL, 43)}", "sendgrid_api_key"),
        jwt=Secret(b64(rng, 48), "env_secret"),
        dsnpub=hexs(rng, 32),
        org=str(rng.randint(100000, 999999)),
        proj=str(rng.randint(1000000, 9999999)),
        version=Keep(f"v{rng.randint(1, 4)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}", "version"),
    )


def env_example(rng: random.Random) -> Case:
    return render(
        "# Copy to .env and fill in\nDATABASE_URL=postgres://user:«ph1»@localhost:5432/app\n"
        "DB_PASSWORD=«ph2»\nSECRET_KEY=«ph3»\nAPI_TOKEN=«ph4»\nSMTP_PASSWORD=«ph5»\n"
        "ADMIN_EMAIL=«mail»\n",
        ".env.example",
        "config",
        ph1=Keep(
            rng.choice(["password", "<password>", "changeme", "${DB_PASSWORD}"]), "placeholder"
        ),
        ph2=Keep(
            rng.choice(["<your-password>", "changeme", "****", "${DB_PASSWORD}"]), "placeholder"
        ),
        ph3=Keep(
            rng.choice(["<generate-one>", "replace-me", "your-secret-key-here"]), "placeholder"
        ),
        ph4=Keep(rng.choice(["YOUR_API_TOKEN", "<token>", "xxxxxxxxxxxxxxxx"]), "placeholder"),
        ph5=Keep(rng.choice(["", "changeme", "<smtp-password>"]) or "''", "placeholder"),
        mail=Keep(f"{rng.choice(['ops', 'admin', 'jane.doe'])}@example.com", "example_email"),
    )


def yaml_app_config(rng: random.Random) -> Case:
    return render(
        "server:\n  port: 8443\n  host: «ip»\n"
        "database:\n  driver: mysql\n  host: «host»\n  port: 3306\n  username: «user»\n"
        "  password: «q»«pw»«q»\n  pool_size: 20\n"
        "  url: mysql://«user»:«upw»@«host»:3306/shop?charset=utf8mb4\n"
        "aws:\n  region: eu-west-1\n  access_key_id: «akid»\n  secret_access_key: «aws»\n"
        "auth:\n  token_ttl: 3600\n  password_min_length: 12\n  session_id: «uuid»\n",
        rng.choice(["config/application.yml", "values.yaml", "settings.yaml"]),
        "config",
        ip=Keep(doc_ip(rng), "documentation_ip"),
        host=rng.choice(HOSTS),
        user=rng.choice(USERS),
        q=rng.choice(["", '"']),
        pw=Secret(password(rng).replace('"', ""), "config_password"),
        upw=Secret(url_password(rng), "mysql_url_password"),
        akid=Secret(aws_access_key_id(rng), "aws_access_key_id"),
        aws=Secret(aws_secret(rng), "aws_secret_access_key"),
        uuid=Keep(str(uuid.UUID(int=rng.getrandbits(128), version=4)), "uuid"),
    )


def ini_config(rng: random.Random) -> Case:
    return render(
        "[DEFAULT]\nServerAliveInterval = 45\n\n[database]\nhost = «host»\nport = 5432\n"
        "user = «user»\npassword = «pw»\n\n[smtp]\nserver = smtp.office365.com\n"
        "login = «user»@acme.io\npass = «smtp»\n\n[api]\nendpoint = https://api.acme.io/v2\n"
        "api_key = «key»\n",
        rng.choice(["config.ini", "app.cfg", "settings.conf"]),
        "config",
        host=rng.choice(HOSTS),
        user=rng.choice(USERS),
        pw=Secret(password(rng), "config_password"),
        smtp=Secret(password(rng), "config_password"),
        key=Secret(hexs(rng, 32), "named_hex_token"),
    )


def toml_config(rng: random.Random) -> Case:
    return render(
        '[tool.app]\nname = "billing"\nversion = "«ver»"\n\n[database]\n'
        'host = "«host»"\nuser = "«user»"\npassword = "«pw»"\n\n[secrets]\n'
        'webhook_secret = "«wh»"\nsigning_key = "«sk»"\n',
        rng.choice(["config.toml", "settings.toml", "secrets.toml"]),
        "config",
        ver=Keep(f"{rng.randint(0, 3)}.{rng.randint(0, 40)}.{rng.randint(0, 20)}", "version"),
        host=rng.choice(HOSTS),
        user=rng.choice(USERS),
        pw=Secret(password(rng), "config_password"),
        wh=Secret(f"whsec_{rand(rng, ALNUM, 32)}", "named_base64_secret"),
        sk=Secret(b64(rng, 32), "named_base64_secret"),
    )


def properties(rng: random.Random) -> Case:
    return render(
        "spring.application.name=orders\nserver.port=8080\n"
        "spring.datasource.url=jdbc:postgresql://«host»:5432/orders?user=«user»&password=«jpw»"
        "&ssl=true\nspring.datasource.username=«user»\nspring.datasource.password=«pw»\n"
        "spring.mail.password=«mpw»\nmanagement.endpoints.web.exposure.include=health,info\n"
        "app.jwt.secret=«jwt»\n",
        rng.choice(["application.properties", "src/main/resources/application-prod.properties"]),
        "config",
        host=rng.choice(HOSTS),
        user=rng.choice(USERS),
        jpw=Secret(url_password(rng), "jdbc_password"),
        pw=Secret(password(rng), "config_password"),
        mpw=Secret(password(rng), "config_password"),
        jwt=Secret(b64(rng, 64), "named_base64_secret"),
    )


def docker_compose(rng: random.Random) -> Case:
    return render(
        'version: "3.9"\nservices:\n  db:\n    image: postgres@sha256:«digest»\n'
        "    environment:\n      POSTGRES_USER: «user»\n      POSTGRES_PASSWORD: «pw»\n"
        "  mysql:\n    image: mysql:8.0.36\n    environment:\n"
        "      - MYSQL_ROOT_PASSWORD=«root»\n      - MYSQL_PASSWORD=${MYSQL_PASSWORD}\n"
        "  queue:\n    image: rabbitmq:3-management\n    environment:\n"
        "      RABBITMQ_DEFAULT_PASS: «rmq»\n  worker:\n    build: .\n    environment:\n"
        "      BROKER_URL: amqp://«user»:«apw»@queue:5672/%2F\n",
        rng.choice(["docker-compose.yml", "compose.yaml", "deploy/docker-compose.prod.yml"]),
        "config",
        digest=Keep(sha_hex(rng), "docker_digest"),
        user=rng.choice(USERS),
        pw=Secret(password(rng), "config_password"),
        root=Secret(password(rng), "config_password"),
        rmq=Secret(password(rng), "config_password"),
        apw=Secret(url_password(rng), "amqp_url_password"),
    )


def django_settings(rng: random.Random) -> Case:
    return render(
        '"""Django settings for acme project."""\nimport os\nfrom pathlib import Path\n\n'
        "BASE_DIR = Path(__file__).resolve().parent.parent\n\n"
        "# SECURITY WARNING: keep the secret key used in production secret!\n"
        "SECRET_KEY = «q»«key»«q»\n\nDEBUG = False\nALLOWED_HOSTS = ['acme.io']\n\n"
        "DATABASES = {\n    'default': {\n        'ENGINE': 'django.db.backends.postgresql',\n"
        "        'NAME': 'acme',\n        'USER': '«user»',\n        'PASSWORD': '«pw»',\n"
        "        'HOST': '«host»',\n        'PORT': '5432',\n    }\n}\n\n"
        "AUTH_PASSWORD_VALIDATORS = [\n    {'NAME': 'django.contrib.auth.password_validation."
        "UserAttributeSimilarityValidator'},\n    {'NAME': 'django.contrib.auth."
        "password_validation.MinimumLengthValidator'},\n]\n\n"
        "EMAIL_HOST_PASSWORD = os.environ['EMAIL_HOST_PASSWORD']\n"
        "AWS_SECRET_ACCESS_KEY = os.environ.get('AWS_SECRET_ACCESS_KEY')\n"
        "PASSWORD_RESET_TIMEOUT = 259200\n",
        rng.choice(["acme/settings.py", "config/settings/production.py", "settings.py"]),
        "code",
        q=rng.choice(["'", '"']),
        key=Secret(django_key(rng), "django_secret_key"),
        user=rng.choice(USERS),
        pw=Secret(password(rng).replace("'", ""), "config_password"),
        host=rng.choice(HOSTS),
    )


def django_getenv_default(rng: random.Random) -> Case:
    return render(
        "import os\n\nSECRET_KEY = os.getenv('DJANGO_SECRET_KEY', '«key»')\n"
        "DEBUG = os.getenv('DEBUG', 'false') == 'true'\n",
        "project/settings/base.py",
        "code",
        key=Secret(
            "django-insecure-" + django_key(rng).removeprefix("django-insecure-"),
            "django_secret_key",
        ),  # fmt: skip
    )


def flask_config(rng: random.Random) -> Case:
    style = rng.randrange(3)
    if style == 0:
        key = Secret(hexs(rng, 64), "flask_secret_key")
        line = "app.config['SECRET_KEY'] = '«key»'"
    elif style == 1:
        raw = rng.randbytes(16)
        key = Secret(repr(raw)[2:-1].replace("'", ""), "flask_secret_key")
        line = "app.secret_key = b'«key»'"
    else:
        key = Secret(rand(rng, B64URL, 43), "flask_secret_key")
        line = 'SECRET_KEY = "«key»"'
    return render(
        "from flask import Flask\n\napp = Flask(__name__)\n"
        + line
        + "\napp.config['SESSION_COOKIE_SECURE'] = True\n\n\n@app.route('/')\ndef index():\n"
        "    return 'ok'\n",
        rng.choice(["app.py", "config.py", "wsgi.py"]),
        "code",
        key=key,
    )


def python_client(rng: random.Random) -> Case:
    return render(
        'import os\n\nimport requests\nimport stripe\n\nstripe.api_key = "«stripe»"\n'
        'TWILIO_ACCOUNT_SID = "AC«sid»"\nTWILIO_AUTH_TOKEN = "«tw»"\n'
        'GITHUB_TOKEN = "«gh»"\nHEADERS = {"Authorization": "Bearer «bearer»"}\n\n\n'
        "def fetch(url, token=None):\n    token = token or os.environ['API_TOKEN']\n"
        '    return requests.get(url, headers={"X-Api-Key": token}, timeout=10)\n',
        rng.choice(["scripts/sync_payments.py", "tools/client.py"]),
        "code",
        stripe=Secret(f"sk_live_{rand(rng, ALNUM, 99)}", "stripe_secret_key"),
        sid=hexs(rng, 32),
        tw=Secret(hexs(rng, 32), "twilio_auth_token"),
        gh=Secret(f"ghp_{rand(rng, ALNUM, 36)}", "github_token"),
        bearer=Secret(rand(rng, ALNUM, 40), "bearer_token"),
    )


def jdbc_odbc(rng: random.Random) -> Case:
    odbc_pw = password(rng).replace(";", "").replace("}", "")
    braced = rng.random() < 0.4
    return render(
        '<connectionStrings>\n  <add name="Main" connectionString="Server=tcp:«srv».database.'
        'windows.net,1433;Initial Catalog=acme;User ID=«user»;Password=«mspw»;Encrypt=True;" />\n'
        '  <add name="Legacy" connectionString="Driver={ODBC Driver 18 for SQL Server};'
        'Server=«srv»;Database=hr;Uid=«user»;Pwd=«odbc»;" />\n</connectionStrings>\n'
        '<appSettings>\n  <add key="ReportDb" value="jdbc:mysql://«host»:3306/reports?'
        'user=«user»&amp;password=«jpw»" />\n</appSettings>\n',
        rng.choice(["Web.config", "app.config", "App.config"]),
        "config",
        srv=rng.choice(["acme-sql", "hr-db", "mssql01"]),
        user=rng.choice(USERS),
        mspw=Secret(password(rng).replace(";", "").replace('"', ""), "mssql_password"),
        odbc=Secret("{" + odbc_pw + "}" if braced else odbc_pw, "odbc_password"),
        host=rng.choice(HOSTS),
        jpw=Secret(url_password(rng), "jdbc_password"),
    )


def connection_urls_in_code(rng: random.Random) -> Case:
    scheme, kind, port = rng.choice(
        [
            ("postgresql", "postgres_url_password", 5432),
            ("mysql+pymysql", "mysql_url_password", 3306),
            ("redis", "redis_url_password", 6379),
            ("amqps", "amqp_url_password", 5671),
        ]
    )
    return render(
        "from sqlalchemy import create_engine\nfrom pymongo import MongoClient\n\n"
        'engine = create_engine("«scheme»://«user»:«pw»@«host»:«port»/app")\n'
        'client = MongoClient("mongodb+srv://«user»:«mpw»@cluster0.«c».mongodb.net/'
        '?retryWrites=true&w=majority")\n'
        "# for local runs: postgresql://user:password@localhost:5432/app\n",
        rng.choice(["db.py", "app/database.py", "etl/connect.py"]),
        "code",
        scheme=scheme,
        user=rng.choice(USERS),
        pw=Secret(url_password(rng), kind),
        host=rng.choice(HOSTS),
        port=str(port),
        mpw=Secret(url_password(rng), "mongodb_url_password"),
        c=rand(rng, string.ascii_lowercase + string.digits, 5),
    )


def kubeconfig(rng: random.Random) -> Case:
    cert = base64.b64encode(public_pem(rng).encode() + b"\n").decode()
    key = base64.b64encode(private_pem(rng).encode() + b"\n").decode()
    return render(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
        "    certificate-authority-data: «ca»\n    server: https://«ip»:6443\n"
        "  name: prod\ncontexts:\n- context:\n    cluster: prod\n    user: admin\n  name: prod\n"
        "current-context: prod\nusers:\n- name: admin\n  user:\n"
        "    client-certificate-data: «cert»\n    client-key-data: «key»\n"
        "- name: ci\n  user:\n    token: «token»\n",
        rng.choice(["kubeconfig", "admin.conf", ".kube/config"]),
        "config",
        ca=Keep(cert, "certificate_base64"),
        ip=Keep(doc_ip(rng), "documentation_ip"),
        cert=Keep(cert, "certificate_base64"),
        key=Secret(key, "kubeconfig_client_key"),
        token=Secret(jwt(rng) if rng.random() < 0.5 else rand(rng, ALNUM, 52), "kubeconfig_token"),
    )


def k8s_secret_yaml(rng: random.Random) -> Case:
    return render(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: web-tls\ntype: kubernetes.io/tls\n"
        "stringData:\n  tls.crt: |\n«crt»\n  tls.key: |\n«key»\n",
        "k8s/web-tls-secret.yaml",
        "config",
        crt=Keep(textwrap.indent(public_pem(rng), "    "), "pem_public"),
        key=Secret(textwrap.indent(private_pem(rng), "    "), "private_key_yaml_block"),
    )


def gcp_service_account(rng: random.Random) -> Case:
    key = private_pem(rng).replace("RSA PRIVATE", "PRIVATE").replace("EC PRIVATE", "PRIVATE")
    project = f"{rng.choice(WORDS)}-{rng.randint(100000, 999999)}"
    obj = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "«kid»",
        "private_key": "«key»",
        "client_email": f"etl@{project}.iam.gserviceaccount.com",
        "client_id": str(rng.randint(10**20, 10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
    }
    return render(
        json.dumps(obj, indent=2, ensure_ascii=False) + "\n",
        rng.choice(["service-account.json", "gcp-key.json", "credentials/etl-sa.json"]),
        "config",
        kid=Secret(hexs(rng, 40), "gcp_private_key_id"),
        key=Secret(json.dumps(key + "\n")[1:-1], "gcp_service_account_key"),
    )


def azure_storage(rng: random.Random) -> Case:
    return render(
        '{\n  "IsEncrypted": false,\n  "Values": {\n    "AzureWebJobsStorage": '
        '"DefaultEndpointsProtocol=https;AccountName=«acct»;AccountKey=«key»;'
        'EndpointSuffix=core.windows.net",\n    "FUNCTIONS_WORKER_RUNTIME": "python",\n'
        '    "ServiceBus": "Endpoint=sb://acme-bus.servicebus.windows.net/;'
        'SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=«sas»"\n  }\n}\n',
        "local.settings.json",
        "config",
        acct=f"acme{rng.choice(WORDS)}",
        key=Secret(b64(rng, 64), "azure_storage_key"),
        sas=Secret(b64(rng, 32), "azure_storage_key"),
    )


def aws_credentials_file(rng: random.Random) -> Case:
    return render(
        "[default]\naws_access_key_id = «id1»\naws_secret_access_key = «s1»\nregion = us-east-1\n\n"
        "[deploy]\naws_access_key_id=«id2»\naws_secret_access_key=«s2»\n",
        rng.choice([".aws/credentials", "credentials"]),
        "config",
        id1=Secret(aws_access_key_id(rng), "aws_access_key_id"),
        s1=Secret(aws_secret(rng), "aws_secret_access_key"),
        id2=Secret(aws_access_key_id(rng), "aws_access_key_id"),
        s2=Secret(aws_secret(rng), "aws_secret_access_key"),
    )


def aws_credentials_csv(rng: random.Random) -> Case:
    return render(
        "User name,Password,Access key ID,Secret access key,Console login link\n"
        "«user»,,«kid»,«secret»,https://«acct».signin.aws.amazon.com/console\n",
        f"{rng.choice(USERS)}_accessKeys.csv",
        "records",
        user=rng.choice(USERS),
        kid=Secret(aws_access_key_id(rng), "aws_access_key_id"),
        secret=Secret(aws_secret(rng), "aws_secret_access_key"),
        acct=str(rng.randint(10**11, 10**12 - 1)),
    )


def npmrc(rng: random.Random) -> Case:
    tok = rng.choice([f"npm_{rand(rng, ALNUM, 36)}", str(uuid.UUID(int=rng.getrandbits(128)))])
    return render(
        "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=«tok»\n"
        "@acme:registry=https://npm.pkg.github.com\n//npm.pkg.github.com/:_authToken=«gh»\n"
        "always-auth=true\n",
        ".npmrc",
        "config",
        tok=Secret(tok, "npm_token"),
        gh=Secret(f"ghp_{rand(rng, ALNUM, 36)}", "github_token"),
    )


def pypirc(rng: random.Random) -> Case:
    return render(
        "[distutils]\nindex-servers =\n    pypi\n    internal\n\n[pypi]\nusername = __token__\n"
        "password = «tok»\n\n[internal]\nrepository = https://pypi.acme.lan/simple/\n"
        "username = «user»\npassword = «pw»\n",
        ".pypirc",
        "config",
        tok=Secret("pypi-AgEIcHlwaS5vcmc" + rand(rng, B64URL, 150), "pypi_token"),
        user=rng.choice(USERS),
        pw=Secret(password(rng), "config_password"),
    )


def netrc(rng: random.Random) -> Case:
    return render(
        "machine api.heroku.com\n  login «user»@acme.io\n  password «tok»\n"
        "machine git.acme.lan login «user» password «pw»\n",
        rng.choice([".netrc", "_netrc"]),
        "config",
        user=rng.choice(USERS),
        tok=Secret(str(uuid.UUID(int=rng.getrandbits(128), version=4)), "netrc_password"),
        pw=Secret(password(rng), "netrc_password"),
    )
