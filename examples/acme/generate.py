"""Write the ACME demo corpus: `python examples/acme/generate.py --out DIR --seed 0 --scale 1.0`.

A thin wrapper over `acme.generate_corpus` (acme.py next to this file); the same seed and
scale always give the same bytes. See README.md next to this file for the domain and its checkable tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from acme import generate_corpus

from forgeml.core.errors import ForgeError


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate the ACME Corp demo corpus.")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--scale", type=float, default=1.0, help="size factor (1.0 ~ 1.8 MB)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args()
    try:
        manifest = generate_corpus(args.out, seed=args.seed, scale=args.scale)
    except ForgeError as err:
        sys.exit(f"error: {err}")
    if not args.quiet:
        folders = {k: v["files"] for k, v in manifest["by_folder"].items()}
        print(
            f"wrote {manifest['files']} files, {manifest['bytes'] / 1e6:.2f} MB to {args.out} "
            f"in {manifest['seconds']:.1f} s"
        )
        print(json.dumps(folders))


if __name__ == "__main__":
    main()
