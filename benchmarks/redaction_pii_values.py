"""Random values for the PII corpus of the redaction benchmark (benchmarks/redaction_pii.py):
names, phone numbers, postal addresses, national identifiers, IBANs, cards, dates, IPs and the
look-alikes, valid the way real ones are (check digits, real area codes, postcode shapes).
"""

from __future__ import annotations

import random
import string
import unicodedata

# Names as people in those countries are called (first, last), incl. particles and compounds.
NAMES = {
    "US": [
        ("James", "Miller"),
        ("Maria", "Rodriguez"),
        ("Emily", "Johnson"),
        ("DeShawn", "Brooks"),
        ("Kevin", "O'Connor"),
        ("Ashley", "Nguyen"),
        ("Robert", "Kowalski"),
        ("Linda", "Chen"),
    ],
    "GB": [
        ("Oliver", "Hughes"),
        ("Charlotte", "Davies"),
        ("Harry", "Patel"),
        ("Amelia", "Evans"),
        ("George", "McAllister"),
        ("Isla", "Thompson"),
    ],
    "DE": [
        ("Lukas", "Müller"),
        ("Anna", "Schneider"),
        ("Jürgen", "Weiß"),
        ("Katrin", "Hoffmann"),
        ("Felix", "Schäfer"),
        ("Sabine", "Zimmermann"),
    ],
    "FR": [
        ("Camille", "Lefèvre"),
        ("Jean-Luc", "Moreau"),
        ("Élodie", "Girard"),
        ("Mathieu", "Fournier"),
        ("Chloé", "Dubois"),
        ("Nicolas", "Lambert"),
    ],
    "NL": [
        ("Daan", "de Vries"),
        ("Sanne", "Jansen"),
        ("Bram", "van den Berg"),
        ("Fleur", "Bakker"),
        ("Thijs", "Visser"),
    ],
    "IT": [
        ("Giuseppe", "Russo"),
        ("Francesca", "Bianchi"),
        ("Alessandro", "Ferrari"),
        ("Giulia", "Esposito"),
        ("Matteo", "Romano"),
    ],
    "ES": [
        ("María", "García López"),
        ("Javier", "Fernández"),
        ("Lucía", "Martínez Ruiz"),
        ("Alejandro", "Sánchez"),
        ("Carmen", "Navarro"),
    ],
    "JP": [("Haruto", "Sato"), ("Yui", "Takahashi"), ("Kenji", "Watanabe"), ("Aiko", "Yamamoto")],
    "SE": [
        ("Lars", "Andersson"),
        ("Ingrid", "Johansson"),
        ("Erik", "Lindqvist"),
        ("Astrid", "Nilsson"),
    ],
    "CA": [("Liam", "Tremblay"), ("Olivia", "Gagnon"), ("Noah", "MacDonald"), ("Emma", "Roy")],
}
COUNTRIES = list(NAMES)
MAIL_DOMAINS = {
    "US": "corp-mail.com",
    "GB": "firm.co.uk",
    "DE": "firma.de",
    "FR": "societe.fr",
    "NL": "bedrijf.nl",
    "IT": "azienda.it",
    "ES": "empresa.es",
    "JP": "kaisha.co.jp",
    "SE": "foretag.se",
    "CA": "company.ca",
}


# ---------------------------------------------------------------- random valid values


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def luhn_digit(payload: str) -> str:
    total = 0
    for i, c in enumerate(reversed(payload)):
        d = int(c)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str(-total % 10)


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def nino(rng: random.Random) -> str:
    first = rng.choice("ABCEGHJKLMNOPRSTWXYZ")
    second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    while first + second in {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}:
        second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    return first + second + digits(rng, 6) + rng.choice("ABCD")


def insee(rng: random.Random, key_offset: int = 0) -> str:
    body = (
        f"{rng.choice('12')}{rng.randint(40, 99):02d}{rng.randint(1, 12):02d}"
        f"{rng.randint(1, 95):02d}{rng.randint(1, 999):03d}{rng.randint(1, 999):03d}"
    )
    key = (97 - int(body) % 97 + key_offset - 1) % 97 + 1
    return f"{body}{key:02d}"


def steuer_id(rng: random.Random, wrong: bool = False) -> str:
    while True:  # ten digits, first not 0, exactly one digit twice, one digit missing
        ds = rng.sample(range(10), 9)
        ds.insert(rng.randint(0, 9), rng.choice(ds))
        if ds[0] != 0:
            break
    product = 10
    for d in ds:
        s = (d + product) % 10 or 10
        product = (s * 2) % 11
    check = (11 - product) % 10
    return "".join(map(str, ds)) + str((check + wrong) % 10)


def bsn(rng: random.Random, wrong: bool = False) -> str:
    while True:
        ds = [rng.randint(0, 9) for _ in range(8)]
        if ds[0] == 0:
            continue
        last = sum(w * d for w, d in zip(range(9, 1, -1), ds, strict=True)) % 11
        if last < 10:
            return "".join(map(str, ds)) + str((last + wrong) % 10)


def dni(rng: random.Random, nie: bool = False) -> str:
    letters = "TRWAGMYFPDXBNJZSQVHLCKE"
    if nie:
        prefix = rng.choice("XYZ")
        number = digits(rng, 7)
        return f"{prefix}{number}{letters[int(str('XYZ'.index(prefix)) + number) % 23]}"
    number = f"{rng.randint(1_000_000, 99_999_999):08d}"
    return number + letters[int(number) % 23]


def codice_fiscale(rng: random.Random) -> str:
    odd = [
        int(n)
        for n in "1 0 5 7 9 13 15 17 19 21 2 4 18 20 11 3 6 8 12 14 16 10 22 25 24 23".split()
    ]
    body = (
        "".join(rng.choice("BCDFGLMNPRSTVZ") for _ in range(6))
        + f"{rng.randint(40, 99)}"
        + rng.choice("ABCDEHLMPRST")
        + f"{rng.choice([rng.randint(1, 28), rng.randint(41, 68)]):02d}"
        + rng.choice("ABCDEFGHLMZ")
        + digits(rng, 3)
    )
    total = 0
    for i, c in enumerate(body):
        v = int(c) if c.isdigit() else ord(c) - 65
        total += odd[v] if i % 2 == 0 else v
    return body + chr(65 + total % 26)


def personnummer(rng: random.Random) -> str:
    date = f"{rng.randint(40, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    serial = digits(rng, 3)
    return f"{date}-{serial}{luhn_digit(date + serial)}"


def sin(rng: random.Random) -> str:
    payload = str(rng.choice([1, 2, 3, 4, 5, 6, 7, 9])) + digits(rng, 7)
    n = payload + luhn_digit(payload)
    return f"{n[:3]} {n[3:6]} {n[6:]}"


def iban_de(rng: random.Random, wrong: bool = False) -> str:
    bban = digits(rng, 18)
    check = 98 - int(bban + "131400") % 97
    s = f"DE{(check + wrong * 3) % 100:02d}{bban}"
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


def card(rng: random.Random, wrong: bool = False) -> str:
    payload = rng.choice(["4", "51", "53", "55", "2221"]) + digits(rng, 15)
    payload = payload[:15]
    n = payload + str((int(luhn_digit(payload)) + wrong) % 10)
    return " ".join(n[i : i + 4] for i in range(0, 16, 4))


# National layouts with real area codes (N: 2-9, #: any digit); E.164 and international forms.
PHONE_LAYOUTS = {
    "US": ("1", ["(212) N##-####", "415-N##-####", "617.N##.####", "(312) N##-####"]),
    "CA": ("1", ["(416) N##-####", "604-N##-####", "514 N## ####"]),
    "GB": ("44", ["020 7### ####", "0161 ### ####", "07### ######", "0113 ### ####"]),
    "DE": ("49", ["030 ########", "089 #######", "0151 ########", "030/#######", "040 ### ###-##"]),
    "FR": ("33", ["01 ## ## ## ##", "06 ## ## ## ##", "04.##.##.##.##", "07 ## ## ## ##"]),
    "NL": ("31", ["020 ### ####", "06 ########", "06-########", "010-### ####"]),
    "IT": ("39", ["02 #### ####", "347 ### ####", "06 ########", "333 #######"]),
    "ES": ("34", ["91# ### ###", "6## ### ###", "93 ### ## ##"]),
    "JP": ("81", ["03-####-####", "090-####-####", "06-####-####", "080-####-####"]),
    "SE": ("46", ["08-### ### ##", "070-### ## ##", "031-## ## ##"]),
}


def phone(rng: random.Random, country: str) -> str:
    """A number in an allocated range (redrawn until the numbering plan, as libphonenumber has
    it, says so: real numbers are allocated), written the way people write them."""
    import phonenumbers

    cc, layouts = PHONE_LAYOUTS[country]
    while True:
        national = "".join(
            str(rng.randint(2, 9)) if c == "N" else rng.choice(string.digits) if c == "#" else c
            for c in rng.choice(layouts)
        )
        if phonenumbers.is_valid_number(phonenumbers.parse(national, country)):
            break
    form = rng.choices(["national", "intl", "e164", "00", "(0)"], [5, 3, 1, 1, 1])[0]
    if form == "national":
        return national
    rest = national[1:] if national.startswith("0") and country not in ("IT",) else national
    rest = rest.lstrip("(").replace(")", "")
    if form == "e164":
        return "+" + cc + "".join(c for c in rest if c.isdigit())
    if form == "00" and country not in ("US", "CA"):
        return f"00{cc} {rest}"
    if form == "(0)" and national.startswith("0") and country in ("DE", "GB", "NL"):
        return f"+{cc} (0){rest}"
    return f"+{cc} {rest}"


# Addresses: (street line, postcode-and-city line), the two labelled pieces.
def address(rng: random.Random, country: str) -> tuple[str, str, str]:
    """(street part, postcode part, city): labelled are the street and the postcode."""
    n = rng.randint(1, 240)
    if country == "US" or country == "CA":
        street = rng.choice(
            [
                "Maple Avenue",
                "Oak Street",
                "W 7th St",
                "Lakeshore Blvd",
                "Pine Hill Rd",
                "Elm Drive",
                "Sunset Boulevard",
            ]
        )
        if country == "US":
            city, st = rng.choice(
                [
                    ("Springfield", "IL"),
                    ("Austin", "TX"),
                    ("Portland", "OR"),
                    ("Columbus", "OH"),
                    ("Raleigh", "NC"),
                ]
            )
            zip_ = f"{rng.randint(10000, 99950)}" + (
                f"-{digits(rng, 4)}" if rng.random() < 0.3 else ""
            )
            apt = rng.choice(
                [
                    "",
                    f", Apt {rng.randint(1, 40)}{rng.choice('AB')}",
                    f" Suite {rng.randint(100, 900)}",
                ]
            )
            return f"{n * 10 + rng.randint(0, 9)} {street}{apt}", f"{st} {zip_}", city
        city, prov = rng.choice([("Toronto", "ON"), ("Vancouver", "BC"), ("Montréal", "QC")])
        pc = (
            f"{rng.choice('KLMNVH')}{rng.randint(1, 9)}{rng.choice('ABCEGHJKLMNPRSTVXY')} "
            f"{rng.randint(1, 9)}{rng.choice('ABCEGHJKLMNPRSTVWXYZ')}{rng.randint(0, 9)}"
        )
        return f"{n} {street}", f"{prov} {pc}", city
    if country == "GB":
        street = rng.choice(
            [
                "Church Lane",
                "Harley Road",
                "Victoria Street",
                "Mill Close",
                "Queens Gardens",
                "High Street",
            ]
        )
        city, area = rng.choice(
            [
                ("London", "NW3"),
                ("London", "SE15"),
                ("Manchester", "M14"),
                ("Leeds", "LS6"),
                ("Bristol", "BS8"),
            ]
        )
        pc = f"{area} {rng.randint(1, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"
        flat = rng.choice(["", f"Flat {rng.randint(1, 12)}, "])
        return f"{flat}{n} {street}", pc, city
    if country == "DE":
        street = rng.choice(
            ["Hauptstraße", "Lindenweg", "Bahnhofstr.", "Goethestraße", "Am Markt", "Schillerplatz"]
        )
        city = rng.choice(["Berlin", "München", "Hamburg", "Köln", "Leipzig"])
        return f"{street} {n}{rng.choice(['', 'a', 'b'])}", f"{rng.randint(1067, 99998):05d}", city
    if country == "FR":
        street = rng.choice(
            [
                "rue de la Paix",
                "avenue Victor Hugo",
                "boulevard Saint-Germain",
                "rue des Lilas",
                "place Bellecour",
            ]
        )
        city = rng.choice(["Paris", "Lyon", "Marseille", "Toulouse", "Nantes"])
        return f"{n}{rng.choice(['', ','])} {street}", f"{rng.randint(1000, 95999):05d}", city
    if country == "NL":
        street = rng.choice(
            ["Keizersgracht", "Dorpsstraat", "Kerkweg", "Stationsplein", "Molenlaan"]
        )
        city = rng.choice(["Amsterdam", "Utrecht", "Rotterdam", "Eindhoven"])
        pc = f"{rng.randint(1000, 9999)} {rng.choice('ABCDEGHJKLMNPRTVWXZ')}{rng.choice('ABCDEGHJKLMNPRTVWXZ')}"
        return f"{street} {n}", pc, city
    if country == "IT":
        street = rng.choice(
            [
                "Via Roma",
                "Corso Vittorio Emanuele II",
                "Via Garibaldi",
                "Piazza Duomo",
                "Viale Europa",
            ]
        )
        city = rng.choice(["Roma", "Milano", "Torino", "Bologna", "Napoli"])
        return f"{street} {n}", f"{rng.randint(10, 98):02d}{digits(rng, 3)}", city
    if country == "ES":
        street = rng.choice(
            [
                "Calle Mayor",
                "Avenida de la Constitución",
                "Calle de Alcalá",
                "Paseo de Gracia",
                "Plaza Nueva",
            ]
        )
        city = rng.choice(["Madrid", "Sevilla", "Barcelona", "Valencia"])
        floor = rng.choice(["", f", {rng.randint(1, 8)}º {rng.choice('ABCD')}"])
        return f"{street} {n}{floor}", f"{rng.randint(1, 52):02d}{digits(rng, 3)}", city
    if country == "JP":
        pref = rng.choice(
            [
                "東京都渋谷区渋谷",
                "大阪府大阪市北区梅田",
                "神奈川県横浜市中区山下町",
                "京都府京都市下京区",
            ]
        )
        street = f"{pref}{rng.randint(1, 5)}丁目{rng.randint(1, 30)}-{rng.randint(1, 20)}"
        return street, f"〒{digits(rng, 3)}-{digits(rng, 4)}", ""
    street = rng.choice(["Storgatan", "Drottninggatan", "Kungsvägen", "Sveavägen"])
    city = rng.choice(["Stockholm", "Göteborg", "Malmö", "Uppsala"])
    return f"{street} {n}", f"{rng.randint(100, 984)} {digits(rng, 2)}", city


MONTHS = {
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
    "it": "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre",
}


def date_value(rng: random.Random, style: str, year: int | None = None) -> str:
    y, m, d = year or rng.randint(1950, 2004), rng.randint(1, 12), rng.randint(1, 28)
    return {
        "iso": f"{y}-{m:02d}-{d:02d}",
        "us": f"{m:02d}/{d:02d}/{y}",
        "eu": f"{d:02d}/{m:02d}/{y}",
        "de": f"{d:02d}.{m:02d}.{y}",
        "nl": f"{d:02d}-{m:02d}-{y}",
        "en_long": f"{d} {MONTHS['en'].split()[m - 1]} {y}",
        "us_long": f"{MONTHS['en'].split()[m - 1]} {d}, {y}",
        "de_long": f"{d}. {MONTHS['de'].split()[m - 1]} {y}",
        "fr_long": f"{d} {MONTHS['fr'].split()[m - 1]} {y}",
        "es_long": f"{d} de {MONTHS['es'].split()[m - 1]} de {y}",
        "it_long": f"{d} {MONTHS['it'].split()[m - 1]} {y}",
        "jp": f"{y}年{m}月{d}日",
    }[style]


def pick_person(rng: random.Random, country: str) -> tuple[str, str]:
    return rng.choice(NAMES[country])


def _mail_local(first: str, last: str) -> str:
    plain = (first + "." + last).lower().replace(" ", "").replace("'", "").replace("ß", "ss")
    return unicodedata.normalize("NFKD", plain).encode("ascii", "ignore").decode()


def email_address(rng: random.Random, first: str, last: str, country: str) -> str:
    domain = rng.choice([MAIL_DOMAINS[country], "gmail.com", "outlook.com", "web.de", "yahoo.fr"])
    plain = _mail_local(first, last)
    local = rng.choice([plain, plain[:1] + plain.partition(".")[2][:6]])
    return f"{local.replace(' ', '')}@{domain}"


NATIONAL_ID = {
    "US": ("SSN", ssn),
    "GB": ("NI number", nino),
    "FR": ("N° de sécurité sociale", insee),
    "DE": ("Steuer-ID", steuer_id),
    "NL": ("BSN", bsn),
    "ES": ("DNI/NIE", lambda rng: dni(rng, nie=rng.random() < 0.3)),
    "IT": ("Codice fiscale", codice_fiscale),
    "SE": ("Personnummer", personnummer),
    "CA": ("SIN", sin),
}
# Each identifier is its own kind in the scores (`pii:ssn`, ...); forgeml redacts all of them
# as `national_id`.
ID_KIND = {
    "US": "ssn", "GB": "nino", "FR": "insee", "DE": "steuer_id", "NL": "bsn", "ES": "dni",
    "IT": "codice_fiscale", "SE": "personnummer", "CA": "sin",
}  # fmt: skip
DOB_LABEL = {
    "US": ("DOB", "us"),
    "GB": ("Date of birth", "en_long"),
    "DE": ("Geburtsdatum", "de"),
    "FR": ("Date de naissance", "eu"),
    "NL": ("Geboortedatum", "nl"),
    "IT": ("Data di nascita", "eu"),
    "ES": ("Fecha de nacimiento", "eu"),
    "JP": ("生年月日", "jp"),
    "SE": ("Födelsedatum", "iso"),
    "CA": ("Date of birth", "iso"),
}


def public_ip(rng: random.Random) -> str:
    while True:
        first = rng.randint(11, 223)
        if first not in (127, 169, 172, 192, 198, 203, 100):
            return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def doc_ip(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return f"2001:db8:{rng.randint(1, 0xFFFF):x}::{rng.randint(1, 0xFFF):x}"
    net = rng.choice(["192.0.2", "198.51.100", "203.0.113"])
    return f"{net}.{rng.randint(1, 254)}"


def order_number(rng: random.Random) -> str:
    return rng.choice(
        [
            f"{rng.randint(111, 702)}-{digits(rng, 7)}-{digits(rng, 7)}",
            f"PO-{rng.randint(2019, 2025)}-{digits(rng, 5)}",
            f"INV-{rng.randint(2019, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}-{digits(rng, 4)}",
            f"#{rng.randint(100000, 999999)}",
            f"1Z{rng.choice(string.ascii_uppercase)}{digits(rng, 2)}{rng.choice(string.ascii_uppercase)}"
            f"{rng.choice(string.ascii_uppercase)}{digits(rng, 10)}",
        ]
    )


def version_string(rng: random.Random) -> str:
    return rng.choice(
        [
            f"{rng.randint(1, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 40)}",
            f"v{rng.randint(1, 5)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
            f"10.0.{rng.randint(17000, 22631)}.{rng.randint(100, 4000)}",
            f"{rng.randint(1, 4)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}",
        ]
    )


def other_date(rng: random.Random, style: str = "iso") -> str:
    return date_value(rng, style, year=rng.randint(2015, 2025))
