"""What every part of the ACME corpus shares: the generator version, the gap marker, the pools
of names, departments, sites and systems, and the reader of the data files in data/."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from pathlib import Path

import yaml

DATA_DIR = Path(__file__).resolve().parent / "data"
GENERATOR_VERSION = 3
SFT_HELDOUT_PERCENT = 10  # share of SFT items (and translation programs) held out
GAP = "[...]"  # marks an illegible passage in damaged/*.txt

FIRST_NAMES = (
    "Ada Bertram Clara Dmitri Edith Farid Greta Hiro Imogen Jonas Keiko Lars Marisol Nadia "
    "Oskar Priya Quentin Rosa Sven Tamsin Ulrich Vera Wendell Xenia Yusuf Zelda Amos Bianca "
    "Cyrus Delia"
).split()
LAST_NAMES = (
    "Abernathy Brightwater Castellano Dunmore Eskildsen Fairweather Galloway Hollis Ingram "
    "Jablonski Kettleborough Lindqvist Marchetti Northcott Okonkwo Pemberton Quigley Rasmussen "
    "Sandoval Thistlewood Underhill Valderrama Whitcombe Yardley Zabrowski"
).split()
DEPARTMENTS = (
    "Payroll",
    "Logistics",
    "Billing",
    "Warehouse Operations",
    "Customer Accounts",
    "Mainframe Operations",
    "Procurement",
    "Quality Assurance",
    "Internal Audit",
    "Human Resources",
    "Treasury",
    "Field Service",
)
SITES = (
    "Springfield plant",
    "Riverton data centre",
    "Harbor Point office",
    "Northgate warehouse",
    "Cedar Falls depot",
    "Mesa Verde test range",
)
SYSTEMS = ("PAYMASTER", "LEDGER-7", "STOCKPILE", "ROUTEMASTER", "BILLWISE", "GATEKEEPER")
PRODUCTS = (
    "anvils",
    "rocket skates",
    "giant magnets",
    "portable holes",
    "spring boots",
    "bird seed",
    "dehydrated boulders",
    "jet-propelled pogo sticks",
)
MACHINE = "ACME/370"


def person(rng: random.Random) -> str:
    """A made-up full name."""
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def random_date(rng: random.Random, start_year: int, end_year: int) -> dt.date:
    """A day from January 1 of `start_year` to December 30 of `end_year`."""
    start = dt.date(start_year, 1, 1)
    span = (dt.date(end_year, 12, 31) - start).days
    return start + dt.timedelta(days=rng.randrange(span))


def load_data(name: str) -> dict:
    """One data file of the corpus: `data/<name>.yaml`."""
    return yaml.safe_load((DATA_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


def section_counts(scale: float) -> dict[str, int]:
    """How many items of each section a corpus of size `scale` has."""

    def n(base: int) -> int:
        return max(1, round(base * scale))

    return {
        "programs": n(420),
        "manuals": n(360),
        "policies": n(96),
        "memos": n(480),
        "damaged": n(150),
        "snippets": n(400),
    }


def fill_placeholders(s: str, rng: random.Random) -> str:
    """`{machine}` and `{dept}` (a random department) filled in."""
    return s.replace("{machine}", MACHINE).replace("{dept}", rng.choice(DEPARTMENTS))


def sft_is_heldout(key: str) -> bool:
    """Deterministic ~10% held-out split by a hash of the item's key."""
    digest = hashlib.sha256(f"acme-sft-heldout:{key}".encode()).hexdigest()
    return int(digest[:8], 16) % 100 < SFT_HELDOUT_PERCENT


def translation_is_heldout(slug: str) -> bool:
    """Whether program `slug` is held out of the translation task (SFT, DPO, RL and the
    corpus's Python files alike)."""
    return sft_is_heldout(f"translate-{slug}")
