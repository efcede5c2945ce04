"""The bundled demo domain: ACME Corp and its legacy language ACME-CL (see examples/acme)."""

from forgeml.demo.acme import build_corpus, corpus_digest, generate_corpus
from forgeml.demo.acme_cl import (
    AcmeError,
    AcmeLimitError,
    AcmeRuntimeError,
    AcmeSyntaxError,
    check_translation,
    parse_acme,
    run_acme,
    run_python_cases,
    score_translation,
)

__all__ = [
    "AcmeError",
    "AcmeLimitError",
    "AcmeRuntimeError",
    "AcmeSyntaxError",
    "build_corpus",
    "check_translation",
    "corpus_digest",
    "generate_corpus",
    "parse_acme",
    "run_acme",
    "run_python_cases",
    "score_translation",
]
