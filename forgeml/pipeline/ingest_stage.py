"""The ingest stage: files and folders in, a raw document dataset asset out (the first stage).

The asset holds `data.parquet` (one row per document) and `report.json` (every file, kept or
skipped and why), and, when the sources hold images or audio, `media.parquet` with the media
under `media/`; a re-run is answered from the cache while no source file changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from forgeml.core.data_config import MediaConfig, OcrConfig
from forgeml.core.errors import DataError
from forgeml.core.io import atomic_write_text
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage


def _sources_fingerprint(sources: list[Path]) -> str:
    """Cheap change detector for ingest caching: every file's path, size and mtime."""
    h = hashlib.sha256()
    for src in sources:
        if not src.exists():
            raise DataError(f"source not found: {src}", hint="check the path")
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for path in files:
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return h.hexdigest()


def ingest_stage(
    ws: Workspace,
    sources: list[str | Path],
    *,
    name: str,
    media: MediaConfig | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    max_file_bytes: int = 16 * 1024 * 1024,
    text_fields: list[str] | None = None,
    ocr: OcrConfig | None = None,
    force: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Read files/folders into a raw dataset asset (`data.parquet` + `report.json`, and the
    media when `media.enabled`: the default, `MediaConfig()`)."""
    from forgeml.data.ingest import ingest_files
    from forgeml.data.readers.ocr import engine_label

    ocr = ocr or OcrConfig()
    media = media or MediaConfig()
    paths = [Path(s).expanduser().resolve() for s in sources]
    if not paths:
        raise DataError("no sources given", hint="pass one or more files or folders")
    config = {
        "sources": [str(p) for p in paths],
        "include": list(include or ["**/*"]),
        "exclude": list(exclude or []),
        "max_file_bytes": max_file_bytes,
        "fingerprint": _sources_fingerprint(paths),
        "text_fields": list(text_fields or []),
        "name": name,
        # the OCR settings and the engine found here: installing Tesseract changes the output
        "ocr": {**ocr.output_settings(), "engine": engine_label(ocr)},
        "media": media.output_settings(),
    }

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        out = work / "dataset"
        report = ingest_files(
            paths,
            out / "data.parquet",
            include=config["include"],
            exclude=config["exclude"],
            max_file_bytes=max_file_bytes,
            text_fields=config["text_fields"],
            ocr=ocr,
            media=media,
            progress=progress,
        )
        report.out_path = "data.parquet"  # not the run's folder: the asset id is its content's
        summary = report.to_dict()
        atomic_write_text(out / "report.json", json.dumps(summary, indent=1))
        meta = {k: v for k, v in summary.items() if k != "files"}
        meta["ocr"] = {k: v for k, v in summary["ocr"].items() if k != "documents"}
        if "media" in summary:
            meta["media"] = {k: v for k, v in summary["media"].items() if k != "dedup"}
            meta["media"]["duplicates"] = sum(
                summary["media"]["dedup"][k] for k in ("exact_duplicates", "near_duplicates")
            )
        meta["format"] = "documents-parquet"
        metrics = {k: summary[k] for k in ("found", "kept", "skipped", "failed")}
        return [Output("dataset", name, out, meta)], metrics

    return run_stage(ws, "ingest", config, [], body, force=force, notify=notify)
