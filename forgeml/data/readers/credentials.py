"""Key and credential files (`.pem`, `.key`, `id_rsa`, `.env*`, kubeconfigs, `.netrc`...):
read like text, never skipped unseen, and typed `sensitive_file` with a kind (private-key,
public-key, certificate, dotenv, kubeconfig, credentials) so curation's secret detection
scans them and the ingest report counts them. Binary key stores are skipped by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import PurePath

from forgeml.data.readers.base import Part, Reader, ReadOptions, SkipDocument, decode_text

SENSITIVE_TYPE = "sensitive_file"
TEXT_KEY_SUFFIXES = {
    ".pem": "pem",
    ".key": "private-key",
    ".crt": "certificate",
    ".cer": "certificate",
    ".csr": "certificate",
    ".pub": "public-key",
    ".asc": "pgp",
    ".kubeconfig": "kubeconfig",
    ".htpasswd": "credentials",
}
BINARY_KEY_STORES = {
    ".p12": "PKCS#12",
    ".pfx": "PKCS#12",
    ".jks": "Java key store",
    ".keystore": "Java key store",
    ".kdbx": "KeePass database",
    ".der": "DER certificate or key",
    ".gpg": "GnuPG keyring",
}
CREDENTIAL_NAMES = {
    "kubeconfig": "kubeconfig",
    ".netrc": "credentials",
    "_netrc": "credentials",
    ".pgpass": "credentials",
    ".pypirc": "credentials",
    ".npmrc": "credentials",
    ".git-credentials": "credentials",
    ".htpasswd": "credentials",
    "authorized_keys": "public-key",
    "known_hosts": "public-key",
}
CREDENTIAL_IN_FOLDER = {  # (folder, name): a file named like a generic config, in context
    (".kube", "config"): "kubeconfig",
    (".aws", "credentials"): "credentials",
    (".aws", "config"): "credentials",
    (".docker", "config.json"): "credentials",
}
_SSH_KEY_NAME = re.compile(r"id_(rsa|dsa|ecdsa|ed25519)(_sk)?(\.pub)?")
_PEM_LABEL = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
_SSH_PUBLIC = re.compile(r"^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-\S+|sk-\S+@openssh\.com) ", re.M)


def _kind_of_name(path: PurePath) -> str | None:
    name, suffix = path.name, path.suffix.lower()
    if (path.parent.name, name) in CREDENTIAL_IN_FOLDER:
        return CREDENTIAL_IN_FOLDER[(path.parent.name, name)]
    if name in CREDENTIAL_NAMES:
        return CREDENTIAL_NAMES[name]
    if match := _SSH_KEY_NAME.fullmatch(name):
        return "public-key" if match.group(3) else "private-key"
    if name == ".env" or name.startswith(".env.") or suffix == ".env":
        return "dotenv"
    return TEXT_KEY_SUFFIXES.get(suffix)


def kind_of_content(text: str, default: str) -> str:
    """What a key file holds, from its PEM labels or ssh key lines; `default` otherwise."""
    labels = set(_PEM_LABEL.findall(text))
    if any("PRIVATE" in label for label in labels):
        return "private-key"
    if any("CERTIFICATE" in label and "REQUEST" not in label for label in labels):
        return "certificate"
    if any("PUBLIC" in label for label in labels) or _SSH_PUBLIC.search(text):
        return "public-key"
    return default


def _sensitive_reader(kind: str) -> Reader:
    def parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
        text = decode_text(data)
        found = kind_of_content(text, kind) if kind in ("pem", "pgp", "private-key") else kind
        yield Part(text, language="private-key" if found == "pem" else found)

    return Reader(SENSITIVE_TYPE, _unsupported, kind, parts)


def _binary_store_reader(what: str) -> Reader:
    def parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
        try:
            text = decode_text(data)
        except SkipDocument:
            raise SkipDocument("binary key store", f"{what}: not text") from None
        yield Part(text, language=kind_of_content(text, "key-store"))

    return Reader(SENSITIVE_TYPE, _unsupported, "key-store", parts)


def _unsupported(data: bytes) -> str:
    raise SkipDocument("multi-document", "read with read_parts")


_KUBECONFIG = re.compile(r"^kind:\s*['\"]?Config\b", re.M)
CONFIG_LANGUAGES = ("yaml", "json", "ini", "toml", "properties")  # read by `config_reader`


def sensitive_config_kind(text: str) -> str | None:
    """A configuration file that is a credential by its content: a kubeconfig under any
    name (kubeadm's admin.conf), a cloud service-account key, a private key pasted in."""
    if _KUBECONFIG.search(text) and "clusters:" in text and "users:" in text:
        return "kubeconfig"
    if '"service_account"' in text and '"private_key"' in text:
        return "service-account-key"
    if "PRIVATE KEY-----" in text and "-----BEGIN" in text:
        return "private-key"
    return None


def config_reader(language: str) -> Reader:
    """The reader for a configuration language: code, unless its content makes it a
    credential file (then typed `sensitive_file`, like a key file found by name)."""

    def parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
        text = decode_text(data)
        kind = sensitive_config_kind(text)
        yield Part(text, doc_type=SENSITIVE_TYPE, language=kind) if kind else Part(text)

    return Reader("code", _unsupported, language, parts)


def credential_reader(path: PurePath) -> Reader | None:
    """The reader for a key or credential file, by name, or None for any other file."""
    suffix = path.suffix.lower()
    if suffix in BINARY_KEY_STORES:
        return _binary_store_reader(BINARY_KEY_STORES[suffix])
    kind = _kind_of_name(path)
    return _sensitive_reader(kind) if kind else None
