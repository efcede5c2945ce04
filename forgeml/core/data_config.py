"""Recipe sections of data preparation (forgeml.pipeline.prepare): which files are read, how
they are curated (quality filters, PII and secret redaction, dedup) and mixed, the tokenizer,
and fill-in-the-middle at packing time. forgeml.core.config re-exports every class here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgeml.core.curate_profiles import (
    ConfigFileFilterConfig,
    QualityModelConfig,
    RecordFilterConfig,
    ShortTextFilterConfig,
    StructuredTextFilterConfig,
    with_profile,
)


class _Section(BaseModel):
    """A recipe section, as in forgeml.core.config: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MixConfig(_Section):
    """Weighted mixing of the data sources (forgeml.data.mix) after ingest and curation, before
    the tokenizer: each source gets its weight's share of the characters, repeated (whole
    epochs, then a seeded sample) or sampled down to reach it."""

    weights: dict[str, float] = Field(
        description="each data.sources entry -> its weight (shares: divided by their sum)"
    )
    total_chars: int | None = Field(
        None, gt=0, description="characters in the mixture; None: all sources' characters"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _positive_weights(self) -> MixConfig:
        for source, weight in self.weights.items():
            if not weight > 0:
                raise ValueError(f"weight of {source} is {weight}; weights must be > 0")
        return self


class OcrConfig(_Section):
    """OCR at ingest (forgeml.data.readers.ocr): PDF pages without a text layer and page
    images (.png .jpg .tif ...) are read with Tesseract when it is installed; without it they
    are accounted for as "ocr unavailable". Every bound below keeps one bad file cheap."""

    enabled: bool = True
    languages: list[str] = Field(
        default_factory=lambda: ["eng"], description="Tesseract language packs, e.g. [eng, deu]"
    )
    dpi: int = Field(300, ge=72, le=600, description="resolution PDF pages are rendered at")
    min_text_chars: int = Field(
        16, ge=0, description="a PDF page whose text layer has fewer characters is OCR'd"
    )
    min_confidence: float = Field(
        60.0, ge=0, le=100, description="pages whose mean word confidence is lower are flagged"
    )
    min_image_words: int = Field(
        3, ge=1, description="an image with fewer OCR'd words holds no page (logos, rules)"
    )
    max_pages: int = Field(200, ge=1, description="pages OCR'd per file (PDF, multi-page TIFF)")
    max_image_pixels: int = Field(
        89_478_485, gt=0, description="larger images are skipped, rendered pages scaled down"
    )
    page_timeout_s: float = Field(120.0, gt=0, description="Tesseract time per page")
    workers: int | None = Field(
        None, ge=1, description="pages OCR'd at once; None: one per CPU core"
    )

    def output_settings(self) -> dict[str, Any]:
        """The settings that decide the text: all but how many pages run at once."""
        return self.model_dump(mode="json", exclude={"workers"})


class MediaDedupConfig(_Section):
    """Media dedup at ingest (forgeml.data.media_curate): exact by the hash of decoded pixels
    or samples, near for images by pHash (Zauner 2010) within a Hamming distance. Duplicates
    stay listed in the media table with `duplicate_of`, their bytes stored once."""

    exact: bool = True
    near: bool = True
    keep_different_text: bool = Field(
        True,
        description="images whose paired texts (caption, OCR) both exist and differ are not "
        "near duplicates (forms filled in differently, pages of one template)",
    )
    max_hamming: int = Field(
        6, ge=0, le=64, description="images whose pHashes differ in at most this many bits"
    )
    hash_size: int = Field(8, ge=4, le=16, description="pHash side: hash_size**2 bits")


class MediaConfig(_Section):
    """Images and audio at ingest (forgeml.data.media_ingest): decoded, validated, stripped of
    metadata (EXIF/XMP/IPTC/PNG text/audio tags) and stored content-addressed under the
    dataset's `media/` with a `media.parquet` table; the text records are unchanged.
    Not done (options to add): face detection (to blur or drop photos of people) and a
    text-in-photo flag; page images already carry their OCR transcription."""

    enabled: bool = True
    images: bool = True
    audio: bool = True
    pdf_pages: bool = Field(True, description="render scanned PDF pages as page images")
    pdf_dpi: int = Field(150, ge=72, le=600, description="resolution PDF pages are rendered at")
    max_image_pixels: int = Field(89_478_485, gt=0, description="larger images are skipped")
    max_frames: int = Field(200, ge=1, description="pages kept per multi-page TIFF or PDF")
    max_audio_seconds: float = Field(4 * 3600.0, gt=0, description="longer audio is skipped")
    max_file_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="images and audio up to this size are stored even when larger than "
        "data.max_file_bytes (the limit for text); larger ones are skipped as too large",
    )
    pairs: bool = Field(
        True, description="pair media with captions/transcripts (sidecars, alt text, OCR)"
    )
    dedup: MediaDedupConfig = MediaDedupConfig()

    def output_settings(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class DataConfig(_Section):
    """Which files become the raw dataset."""

    sources: list[str] = Field(default_factory=list, description="files or folders to ingest")
    include: list[str] = Field(default_factory=lambda: ["**/*"], description="glob patterns kept")
    exclude: list[str] = Field(default_factory=list, description="glob patterns dropped")
    name: str = "corpus"
    max_file_bytes: int = Field(16 * 1024 * 1024, gt=0)
    heldout_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="documents held out for eval")
    text_fields: list[str] = Field(
        default_factory=list, description="JSONL/CSV/Parquet records: fields holding the text"
    )
    ocr: OcrConfig = OcrConfig()
    media: MediaConfig = MediaConfig()
    curate: bool = Field(False, description="run the `curate` section between ingest and tokenizer")
    mix: MixConfig | None = Field(None, description="re-weight the sources; None: as ingested")

    @model_validator(mode="after")
    def _mix_names_every_source(self) -> DataConfig:
        if self.mix is None:
            return self
        unknown = [s for s in self.mix.weights if s not in self.sources]
        if unknown:
            raise ValueError(
                f"mix.weights names {unknown[0]}, which is not in data.sources {self.sources}; "
                "key each weight by a data.sources entry, written the same way"
            )
        missing = [s for s in self.sources if s not in self.mix.weights]
        if missing:
            raise ValueError(f"mix.weights has no weight for data.sources entry {missing[0]}")
        return self


class TokenizerConfig(_Section):
    vocab_size: int = Field(4096, ge=300, le=1 << 20)
    min_frequency: int = Field(2, ge=1)
    max_train_bytes: int = Field(256 * 1024 * 1024, gt=0, description="cap on text fed to BPE")


class FimConfig(_Section):
    """Fill-in-the-middle at packing time (Bavarian et al., arXiv:2207.14255); rate 0 = off."""

    rate: float = Field(0.0, ge=0, le=1, description="share of documents turned into FIM examples")
    spm_rate: float = Field(0.5, ge=0, le=1, description="share of FIM examples in SPM order")
    unit: Literal["char", "line", "word"] = Field(
        "char", description="middles: random char spans, whole lines, or runs of whole words"
    )
    span_mix: dict[Literal["char", "line", "word"], float] = Field(
        default_factory=dict,
        description="draw each middle's unit with these weights, e.g. {word: 0.6, line: 0.2, "
        "char: 0.2}; empty: always `unit`",
    )
    max_span_words: int = Field(3, ge=1, description="word middles: 1..this many words")
    chunk_chars: int = Field(
        0, ge=0, description="FIM per chunk of ~this many chars (0: whole document); ~3x seq_len"
    )
    seed: int = 0


class LengthFilterConfig(_Section):
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(1_000_000, gt=0)


class GopherQualityConfig(_Section):
    """Gopher quality rules (Rae et al., arXiv 2112.11446, appendix A), prose only."""

    enabled: bool = True
    min_words: int = Field(50, ge=0)
    max_words: int = Field(100_000, gt=0)
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = Field(2, ge=0)


class GopherRepetitionConfig(_Section):
    """Gopher repetition rules (Rae et al., arXiv 2112.11446, table A1), prose only."""

    enabled: bool = True
    max_dup_line_fraction: float = 0.30
    max_dup_para_fraction: float = 0.30
    max_dup_line_char_fraction: float = 0.20
    max_dup_para_char_fraction: float = 0.20
    max_top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    max_dup_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


class LanguageFilterConfig(_Section):
    """Language id with langdetect (seeded: deterministic); prose only."""

    enabled: bool = True
    keep: list[str] = Field(default_factory=list, description="ISO codes kept; empty: all")
    min_confidence: float = Field(0.0, ge=0, le=1)
    sample_chars: int = Field(1000, gt=0, description="characters looked at per document")


class BoilerplateConfig(_Section):
    """Drop boilerplate lines (C4-style, Raffel et al., arXiv 1910.10683)."""

    enabled: bool = True
    patterns: list[str] = Field(
        default_factory=lambda: [
            r"(?i)\b(cookie policy|cookies? (?:help|to improve)|accept (?:all )?cookies)\b",
            r"(?i)^\s*(all rights reserved|privacy policy|terms of (?:use|service))\b.*$",
            r"(?i)^\s*(?:©|\(c\)|copyright)\s*\d{4}.*$",
            r"(?i)\b(javascript (?:is )?(?:required|disabled)|enable javascript)\b",
            r"(?i)^\s*(click here|subscribe to our newsletter|share this|read more)\b.*$",
            r"(?i)lorem ipsum",
        ]
    )
    apply_to: list[str] = Field(default_factory=lambda: ["text", "markdown", "html", "pdf", "docx"])


class CodeFilterConfig(_Section):
    """Code heuristics from The Stack / StarCoder (arXiv 2211.15533, 2305.06161)."""

    enabled: bool = True
    max_line_length: int = Field(1000, gt=0)
    max_mean_line_length: float = Field(100.0, gt=0)
    min_alnum_fraction: float = Field(0.25, ge=0, le=1)
    max_blob_fraction: float = Field(0.5, ge=0, le=1, description="base64/hex runs share")
    generated_markers: list[str] = Field(
        default_factory=lambda: [
            "auto-generated",
            "autogenerated",
            "automatically generated",
            "do not edit",
            "@generated",
            "generated by",
            "code generated",
        ]
    )
    lock_files: list[str] = Field(
        default_factory=lambda: [
            "package-lock.json",
            "yarn.lock",
            "pnpm-lock.yaml",
            "poetry.lock",
            "Pipfile.lock",
            "Cargo.lock",
            "Gemfile.lock",
            "composer.lock",
            "go.sum",
            "uv.lock",
        ]
    )


class RedactConfig(_Section):
    """PII and secrets: per type, `redact` (typed placeholder), `drop` the record, or `keep`."""

    email: Literal["redact", "drop", "keep"] = "redact"
    phone: Literal["redact", "drop", "keep"] = "redact"
    iban: Literal["redact", "drop", "keep"] = "redact"
    credit_card: Literal["redact", "drop", "keep"] = "redact"
    ip: Literal["redact", "drop", "keep"] = "redact"
    # Person names: gazetteer and context rules, plus name keys/columns in exports
    # (forgeml.governance.names); in code only names with both parts in the gazetteer.
    person: Literal["redact", "drop", "keep"] = "redact"
    dob: Literal["redact", "drop", "keep"] = Field(
        "redact", description="dates of birth: dates after a birth word or under a birth key"
    )
    address: Literal["redact", "drop", "keep"] = Field(
        "redact", description="postal addresses: street lines and postcodes (US/UK/CA/EU/JP)"
    )
    national_id: Literal["redact", "drop", "keep"] = Field(
        "redact", description="SSN, NINO, INSEE, Steuer-ID, BSN, DNI/NIE, codice fiscale, ..."
    )
    secret: Literal["redact", "drop"] = "redact"  # secrets are never kept
    keep_private_ips: bool = Field(
        False,
        description="keep private-range IPs (10/8, 192.168/16, fc00::/7); loopback and "
        "documentation ranges are always kept",
    )
    min_entropy: float = Field(4.0, gt=0, description="bits/char for unnamed key-like tokens")
    min_token_length: int = Field(24, gt=8)


class DedupConfig(_Section):
    """Exact (normalised hash) and near-duplicate removal: MinHash + LSH propose candidate
    pairs at `candidate_threshold`, each verified on the exact shingle sets."""

    exact: bool = True
    near: bool = True
    threshold: float = Field(
        0.6, gt=0, lt=1, description="near duplicates: exact Jaccard similarity of shingle sets"
    )
    candidate_threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="LSH S-curve midpoint for candidate pairs (capped at threshold)",
    )
    containment: float | None = Field(
        0.9,
        gt=0,
        le=1,
        description="also near duplicates: this share of the smaller document's shingles in "
        "the larger (a copy with boilerplate added), at Jaccard >= candidate_threshold; "
        "None: off",
    )
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_words: int = Field(5, ge=1)
    seed: int = 1


class CurateConfig(_Section):
    """Curation of a raw dataset: filters -> redaction -> dedup (forgeml.data.curate).

    `profile` sets the defaults (forgeml.core.curate_profiles): `enterprise` judges prose
    by the prose rules and records, configs, short and structured text by rules made for
    them; `web` applies the Gopher/C4 rules to every prose-typed document. What the recipe
    writes always wins over the profile."""

    profile: Literal["enterprise", "web"] = "enterprise"
    seed: int = 0
    length: LengthFilterConfig = LengthFilterConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    language: LanguageFilterConfig = LanguageFilterConfig()
    boilerplate: BoilerplateConfig = BoilerplateConfig()
    code: CodeFilterConfig = CodeFilterConfig()
    user_filters: list[str] = Field(
        default_factory=list, description="import paths 'pkg.module:function' (text, record)"
    )
    redact: RedactConfig = RedactConfig()
    dedup: DedupConfig = DedupConfig()
    prose_types: list[str] = Field(
        default_factory=lambda: [
            "text",
            "markdown",
            "html",
            "pdf",
            "scan",
            "docx",
            "document",
            "presentation",
            "mail",
            "records",
        ]
    )
    prose_min_words: int = Field(
        0, ge=0, description="prose-typed documents with fewer words get the short_text rules"
    )
    prose_shape_gate: bool = Field(
        False,
        description="prose-typed documents failing Gopher's word-shape rules (alpha words, "
        "mean word length, symbols) get the structured_text rules instead of being dropped",
    )
    record_types: list[str] = Field(
        default_factory=list, description="document types judged by the records rules"
    )
    config_languages: list[str] = Field(
        default_factory=list, description="code languages judged by the config_files rules"
    )
    records: RecordFilterConfig = RecordFilterConfig()
    config_files: ConfigFileFilterConfig = ConfigFileFilterConfig()
    short_text: ShortTextFilterConfig = ShortTextFilterConfig()
    structured_text: StructuredTextFilterConfig = StructuredTextFilterConfig()
    quality_model: QualityModelConfig = QualityModelConfig()
    warn_drop_share: float = Field(
        0.2, ge=0, le=1, description="warn when one filter drops more of a document type"
    )
    executor: Literal["local", "processes", "ray"] = Field(
        "local",
        description="processes: the per-record work in `workers` processes on this machine; "
        "ray: as Ray tasks (forgeml[ray]); same output",
    )
    workers: int | None = Field(
        None, ge=1, description="processes: how many; None: one per CPU core"
    )
    ray_address: str | None = Field(
        None, description="ray: cluster address (host:port); None: a local cluster on 127.0.0.1"
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        return with_profile(data)

    def output_settings(self) -> dict[str, Any]:
        """The settings that decide the curated output: all but where it runs, so a Ray run,
        a multi-process run and a local run share their config hash and the stage cache."""
        return self.model_dump(mode="json", exclude={"executor", "workers", "ray_address"})
