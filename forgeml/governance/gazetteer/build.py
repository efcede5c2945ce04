"""Rebuild the person-name gazetteer and the common-word lexicon that `forgeml.governance.names` reads.

Not run at curation time. Sources (all permissive): given/family names from the `names`
package's US Census 1990 lists and from `Faker`'s person providers (Latin-script locales),
both MIT; common words: the lower-case entries of SCOWL's American English list (Debian
`wamerican`, copyright Kevin Atkinson, see its notice in common_words.NOTICE). Fetch without
installing (`pip download --no-deps faker names`, `apt-get download wamerican`), unpack, then
`python forgeml/governance/gazetteer/build.py FAKER_DIR NAMES_DIR /path/to/american-english`.
"""

from __future__ import annotations

import gzip
import importlib
import pkgutil
import sys
import unicodedata
from pathlib import Path

HERE = Path(__file__).parent
CENSUS_LAST_TOP = 20_000  # US Census surnames by frequency rank (88,799 in all)


def _latin(name: str) -> bool:
    letters = [c for c in name if c.isalpha()]
    return bool(letters) and all("LATIN" in unicodedata.name(c, "") for c in letters)


def _clean(names) -> set[str]:
    out = set()
    for n in names:
        n = str(n).strip()
        if len(n) >= 2 and " " not in n and _latin(n) and n[0].isupper():
            out.add(n)
    return out


def faker_names(faker_dir: Path) -> tuple[set[str], set[str]]:
    sys.path.insert(0, str(faker_dir))
    import faker.providers.person as person

    given, family = set(), set()
    for mod in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"faker.providers.person.{mod.name}").Provider
        for attr in dir(provider):
            values = getattr(provider, attr)
            if not isinstance(values, (tuple, list, dict)):
                continue
            if attr.startswith("first_names"):
                given |= _clean(values)
            elif attr.startswith("last_names"):
                family |= _clean(values)
    return given, family


def census_names(names_dir: Path) -> tuple[set[str], set[str]]:
    def read(file: str, top: int | None = None) -> set[str]:
        rows = (line.split()[0] for line in (names_dir / file).read_text().splitlines())
        return {r.capitalize() for i, r in enumerate(rows) if top is None or i < top}

    given = read("dist.male.first") | read("dist.female.first")
    return given, read("dist.all.last", CENSUS_LAST_TOP)


def common_words(dict_file: Path) -> set[str]:
    words = dict_file.read_text(encoding="utf-8").split()
    return {w for w in words if w.isalpha() and w.islower() and w.isascii() and len(w) >= 2}


def _write(file: str, names: set[str]) -> None:
    data = ("\n".join(sorted(names)) + "\n").encode("utf-8")
    with gzip.GzipFile(HERE / file, "wb", mtime=0) as fh:  # mtime 0: reproducible bytes
        fh.write(data)
    print(file, len(names))


def main(faker_dir: str, names_dir: str, dict_file: str) -> None:
    fg, ff = faker_names(Path(faker_dir))
    cg, cf = census_names(Path(names_dir))
    _write("given.txt.gz", fg | cg)
    _write("family.txt.gz", ff | cf)
    _write("common_words.txt.gz", common_words(Path(dict_file)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
