#!/usr/bin/env python3
"""Build the quickstart sample data from the FEBRL and CDNOW reference files.

Writes contacts.csv, orders.csv, email_events.csv and email_events_day2.csv next
to this script (or into --out), then prints the row counts and the expected
suppression figures that data/README.md lists. The output depends only on the
input files and SEED, so two runs give byte-identical files.

Usage: python3 data/make_sample.py [SOURCE_DIR] [--out DIR]

SOURCE_DIR must contain febrl/dataset2.csv and cdnow/CDNOW_sample.txt.
Requires Python 3.11 and the standard library only.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

SEED = 20261130

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = "../shared/data"

FEBRL_COLUMNS = [
    "rec_id",
    "given_name",
    "surname",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
    "date_of_birth",
    "soc_sec_id",
]
CONTACT_COLUMNS = [
    "contact_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "company",
    "company_domain",
    "job_title",
    "country",
    "city",
    "postcode",
    "source",
    "lifecycle_stage",
    "created_at",
    "updated_at",
    # FEBRL columns passed through unchanged.
    "street_number",
    "address_1",
    "address_2",
    "state",
    "date_of_birth",
    "soc_sec_id",
]
ORDER_COLUMNS = [
    "order_id",
    "contact_id",
    "ordered_at",
    "amount",
    "currency",
    "status",
    "quantity",
    "cdnow_customer_id",
]
EVENT_COLUMNS = [
    "event_id",
    "contact_id",
    "email",
    "event_type",
    "bounce_type",
    "reason",
    "campaign_id",
    "occurred_at",
]
TRIGGER_REASONS = ("hard_bounce", "complaint", "unsubscribe")

# Time frame of the synthetic CRM and email data (all UTC).
CONTACTS_START = datetime(2018, 1, 1)
CONTACTS_END = datetime(2026, 11, 20)
UPDATED_END = datetime(2026, 11, 29, 23, 0)
DAY1_END = datetime(2026, 11, 30)  # email_events.csv has events before this instant
DAY2_END = datetime(2026, 12, 1)  # email_events_day2.csv has events before this instant
LATE_WINDOW_START = datetime(2026, 11, 28)

PERSONAL_DOMAINS = [
    ("gmail.com", 32),
    ("bigpond.com", 12),
    ("hotmail.com", 10),
    ("outlook.com", 8),
    ("yahoo.com.au", 8),
    ("icloud.com", 8),
    ("optusnet.com.au", 7),
    ("iinet.net.au", 6),
    ("tpg.com.au", 5),
    ("live.com.au", 4),
]
# Misspelt domains as people type them. Every address with a typo hard-bounces.
DOMAIN_TYPOS = {
    "gmail.com": ["gmial.com", "gmail.con", "gmai.com", "gamil.com"],
    "hotmail.com": ["hotmial.com", "hotmail.con"],
    "outlook.com": ["outlok.com"],
    "yahoo.com.au": ["yaho.com.au", "yahoo.com.ua"],
    "bigpond.com": ["bigpond.con", "bigpnd.com"],
    "icloud.com": ["iclod.com"],
}
# Invented businesses. Any match with a real business is a coincidence.
COMPANIES = [
    ("Bluegum Analytics", "bluegumanalytics.com.au"),
    ("Coastline Freight", "coastlinefreight.com.au"),
    ("Wattle & Co Accounting", "wattleco.com.au"),
    ("Southern Cross Dental", "southerncrossdental.com.au"),
    ("Harbourview Realty", "harbourviewrealty.com.au"),
    ("Redgum Software", "redgumsoftware.io"),
    ("Kookaburra Media", "kookaburramedia.com.au"),
    ("Ironbark Construction", "ironbarkconstruction.com.au"),
    ("Tasman Health Group", "tasmanhealth.com.au"),
    ("Outback Solar", "outbacksolar.com.au"),
    ("Brightwater Insurance", "brightwaterinsurance.com.au"),
    ("Jacaranda Learning", "jacarandalearning.com.au"),
    ("Pelican Bay Hotels", "pelicanbayhotels.com.au"),
    ("Mallee Agriculture", "malleeag.com.au"),
    ("Granite Peak Legal", "granitepeaklegal.com.au"),
    ("Northshore Logistics", "northshorelogistics.com"),
    ("Silver Gull Retail", "silvergull.com.au"),
    ("Banksia Consulting", "banksiaconsulting.com"),
]
JOB_TITLES = [
    "Marketing Manager",
    "Office Manager",
    "Software Engineer",
    "Accountant",
    "Sales Director",
    "Operations Coordinator",
    "Chief Executive Officer",
    "Practice Manager",
    "Data Analyst",
    "Procurement Officer",
    "HR Business Partner",
    "Customer Success Lead",
    "Project Manager",
    "Financial Controller",
]
SOURCES = [
    ("web_form", 35),
    ("newsletter_signup", 25),
    ("list_import", 20),
    ("event", 10),
    ("referral", 10),
]
DUPLICATE_SOURCES = [
    ("list_import", 35),
    ("event", 20),
    ("web_form", 25),
    ("newsletter_signup", 10),
    ("referral", 10),
]
LIFECYCLE_STAGES = [
    ("subscriber", 40),
    ("lead", 35),
    ("marketing_qualified_lead", 12),
    ("sales_qualified_lead", 7),
    ("opportunity", 6),
]
# Telephone area code by state (ACT and NSW share 02, SA, WA and NT share 08).
AREA_CODES = {
    "nsw": "2",
    "act": "2",
    "vic": "3",
    "tas": "3",
    "qld": "7",
    "sa": "8",
    "wa": "8",
    "nt": "8",
}

HARD_BOUNCE_REASONS = [
    "550 5.1.1 user unknown",
    "550 5.1.1 mailbox does not exist",
    "550 5.1.10 recipient address rejected",
]
DOMAIN_BOUNCE_REASONS = [
    "550 5.1.2 host unknown",
    "550 5.4.4 unable to route: no mx record for domain",
]
SOFT_BOUNCE_REASONS = [
    "452 4.2.2 mailbox full",
    "421 4.7.0 too many connections, try again later",
    "451 4.3.0 temporary server error",
]
BLOCK_REASONS = [
    "550 5.7.1 message rejected by policy",
    "554 5.7.1 message rejected as spam",
]
UNSUBSCRIBE_REASONS = [
    "unsubscribe link",
    "list-unsubscribe header",
    "preference centre",
]
COMPLAINT_REASON = "abuse report"


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    send_start: datetime
    # Share of eligible contacts in the audience. None means every contact
    # created in the day before the send (the welcome email for new sign-ups).
    audience_share: float | None


# Campaign ids carry the Australian send date (AEDT, UTC+11), send_start is in UTC.
DAY1_CAMPAIGNS = [
    Campaign("cmp-2026-10-02-spring-newsletter", datetime(2026, 10, 1, 22, 0), 0.20),
    Campaign("cmp-2026-10-09-new-arrivals", datetime(2026, 10, 8, 22, 30), 0.15),
    Campaign("cmp-2026-10-16-loyalty-offer", datetime(2026, 10, 15, 23, 0), 0.18),
    Campaign("cmp-2026-10-28-october-newsletter", datetime(2026, 10, 27, 22, 0), 0.20),
    Campaign("cmp-2026-11-05-event-invite", datetime(2026, 11, 4, 23, 30), 0.12),
    Campaign("cmp-2026-11-13-november-newsletter", datetime(2026, 11, 12, 22, 0), 0.20),
    Campaign("cmp-2026-11-20-early-black-friday", datetime(2026, 11, 19, 21, 0), 0.18),
    Campaign("cmp-2026-11-27-black-friday", datetime(2026, 11, 26, 21, 0), 0.22),
]
DAY2_CAMPAIGNS = [
    Campaign("cmp-2026-11-30-cyber-monday", datetime(2026, 11, 30, 1, 0), 0.10),
    Campaign("welcome-series", datetime(2026, 11, 30, 2, 0), None),
]


def rng_for(label: str) -> random.Random:
    """Return a generator for one part of the build, so parts don't shift each other."""
    return random.Random(f"{SEED}:{label}")


def weighted_choice(rng: random.Random, options: list[tuple[str, int]]) -> str:
    values = [value for value, _ in options]
    weights = [weight for _, weight in options]
    return rng.choices(values, weights)[0]


def random_time(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_email(email: str) -> str:
    """Apply the suppression job's normalization: lower(trim(email))."""
    return email.strip(" ").lower()


# ---------------------------------------------------------------------------
# Reading the reference files


def read_febrl(path: Path) -> list[dict[str, str]]:
    """Read a FEBRL data set, whose fields are separated by a comma and a space."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header = [name.strip() for name in rows[0]]
    if header != FEBRL_COLUMNS:
        sys.exit(
            f"error: unexpected header in {path}: {header}, expected {FEBRL_COLUMNS}"
        )
    records = []
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != len(FEBRL_COLUMNS):
            sys.exit(
                f"error: {path} line {line_number} has {len(row)} fields, expected {len(FEBRL_COLUMNS)}"
            )
        records.append({name: value.strip() for name, value in zip(FEBRL_COLUMNS, row)})
    return records


@dataclass(frozen=True)
class Purchase:
    customer_id: str
    purchased_on: str  # YYYYMMDD
    quantity: str
    amount: str


def read_cdnow(path: Path) -> list[Purchase]:
    """Read the whitespace-separated CDNOW sample, keeping amounts as their exact text."""
    purchases = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if len(fields) != 5:
                sys.exit(
                    f"error: {path} line {line_number} has {len(fields)} fields, expected 5"
                )
            customer_id, _sample_id, purchased_on, quantity, amount = fields
            purchases.append(Purchase(customer_id, purchased_on, quantity, amount))
    return purchases


def person_number(rec_id: str) -> int:
    """Return 12 for 'rec-12-org' and for 'rec-12-dup-3'."""
    return int(rec_id.split("-")[1])


def original_id(rec_id: str) -> str:
    return f"rec-{person_number(rec_id)}-org"


# ---------------------------------------------------------------------------
# Contacts


def name_token(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum())


def birth_year_suffix(rng: random.Random, date_of_birth: str) -> str:
    if len(date_of_birth) == 8 and date_of_birth.isdigit():
        return date_of_birth[2:4]
    return f"{rng.randrange(100):02d}"


def make_local_part(
    rng: random.Random, first: str, last: str, date_of_birth: str
) -> str | None:
    """Derive the part before '@' from the names, or None if both names are missing."""
    if first and last:
        patterns = [
            (f"{first}.{last}", 35),
            (f"{first}{last}", 15),
            (f"{first}_{last}", 5),
            (f"{first[0]}{last}", 10),
            (f"{first[0]}.{last}", 5),
            (f"{last}.{first}", 5),
            (f"{first}.{last}{rng.randint(1, 99)}", 10),
            (f"{first}{birth_year_suffix(rng, date_of_birth)}", 10),
            (f"{first}{last[0]}", 5),
        ]
        return weighted_choice(rng, patterns)
    if first or last:
        return (
            f"{first or last}{birth_year_suffix(rng, date_of_birth)}{rng.randint(1, 9)}"
        )
    return None


def vary_case(rng: random.Random, address: str) -> str:
    """Return the address as a phone keyboard or a form might have capitalised it."""
    local, domain = address.split("@")
    style = rng.choice(["first", "words", "upper", "domain"])
    if style == "first":
        varied = local[:1].upper() + local[1:] + "@" + domain
    elif style == "words":
        parts = local.replace("_", ".").split(".")
        separator = "_" if "_" in local else "."
        varied = (
            separator.join(part.capitalize() for part in parts)
            + "@"
            + domain.capitalize()
        )
    elif style == "upper":
        varied = address.upper()
    else:
        varied = local + "@" + domain.upper()
    if varied == address:
        varied = address.upper()
    return varied


def pad_with_spaces(rng: random.Random, address: str) -> str:
    """Return the address with spaces before it, after it or both, as pasted into a form."""
    before, after = rng.choice([(" ", ""), ("", " "), ("  ", " "), ("", "  ")])
    return before + address + after


def add_typo(rng: random.Random, address: str) -> str:
    """Return the normalized address with one typing error in the local part or the domain."""
    local, domain = address.split("@")
    if domain in DOMAIN_TYPOS and rng.random() < 0.5:
        return local + "@" + rng.choice(DOMAIN_TYPOS[domain])
    position = rng.randrange(len(local))
    kind = rng.choice(["swap", "drop", "double"]) if len(local) > 2 else "double"
    if (
        kind == "swap"
        and position < len(local) - 1
        and local[position] != local[position + 1]
    ):
        local = (
            local[:position]
            + local[position + 1]
            + local[position]
            + local[position + 2 :]
        )
    elif kind == "drop":
        local = local[:position] + local[position + 1 :]
    else:
        local = local[: position + 1] + local[position:]
    return local + "@" + domain


def make_phone(rng: random.Random, state: str) -> str:
    """Return a random Australian mobile or landline number in one of the common notations."""
    if rng.random() < 0.7:
        digits = "4" + "".join(str(rng.randrange(10)) for _ in range(8))
        return weighted_choice(
            rng,
            [
                (f"0{digits[:3]} {digits[3:6]} {digits[6:]}", 50),
                (f"+61 {digits[:3]} {digits[3:6]} {digits[6:]}", 25),
                (f"0{digits}", 15),
                (f"+61{digits}", 10),
            ],
        )
    area = AREA_CODES.get(state, "2")
    # Local numbers never start with 0 or 1.
    number = str(rng.randint(2, 9)) + "".join(str(rng.randrange(10)) for _ in range(7))
    return weighted_choice(
        rng,
        [
            (f"(0{area}) {number[:4]} {number[4:]}", 50),
            (f"0{area} {number[:4]} {number[4:]}", 25),
            (f"+61 {area} {number[:4]} {number[4:]}", 25),
        ],
    )


def contact_from_febrl(record: dict[str, str]) -> dict[str, str]:
    contact = {column: "" for column in CONTACT_COLUMNS}
    contact["contact_id"] = record["rec_id"]
    contact["first_name"] = record["given_name"]
    contact["last_name"] = record["surname"]
    contact["city"] = record["suburb"]
    contact["postcode"] = record["postcode"]
    contact["country"] = "AU"
    for column in (
        "street_number",
        "address_1",
        "address_2",
        "state",
        "date_of_birth",
        "soc_sec_id",
    ):
        contact[column] = record[column]
    return contact


def fill_original(
    rng: random.Random,
    contact: dict[str, str],
    used_addresses: set[str],
    require_email: bool,
) -> None:
    """Fill the synthetic columns of an original record. The email is unique among originals."""
    if rng.random() < 0.35:
        contact["company"], contact["company_domain"] = rng.choice(COMPANIES)
        if rng.random() < 0.9:
            contact["job_title"] = rng.choice(JOB_TITLES)
    if rng.random() < 0.82:
        contact["phone"] = make_phone(rng, contact["state"])

    local = make_local_part(
        rng,
        name_token(contact["first_name"]),
        name_token(contact["last_name"]),
        contact["date_of_birth"],
    )
    if local is None:
        return
    if contact["company_domain"] and rng.random() < 0.6:
        domain = contact["company_domain"]
    else:
        domain = weighted_choice(rng, PERSONAL_DOMAINS)
    address = f"{local}@{domain}"
    suffix = 2
    while address in used_addresses:
        address = f"{local}{suffix}@{domain}"
        suffix += 1
    used_addresses.add(address)

    draw = rng.random()
    if draw < 0.07 and not require_email:
        return  # the address exists, but the contact has no email stored
    if draw < 0.10:
        address = vary_case(rng, address)
    elif draw < 0.115:
        address = address.upper()
    elif draw < 0.135:
        address = pad_with_spaces(rng, address)
    contact["email"] = address


def fill_duplicate(
    rng: random.Random,
    contact: dict[str, str],
    original: dict[str, str],
    used_addresses: set[str],
) -> None:
    """Fill the synthetic columns of a duplicate record from its original.

    Most values are copied, and the rest are changed or left empty as in real
    duplicate records.
    """
    if original["company"] and rng.random() < 0.75:
        contact["company"] = original["company"]
        contact["company_domain"] = original["company_domain"]
        contact["job_title"] = original["job_title"]
    if original["phone"]:
        draw = rng.random()
        if draw < 0.55:
            contact["phone"] = original["phone"]
        elif draw < 0.70:
            contact["phone"] = "".join(
                ch for ch in original["phone"] if ch.isdigit() or ch == "+"
            )

    if not original["email"]:
        return
    original_address = normalize_email(original["email"])
    draw = rng.random()
    if draw < 0.70:
        contact["email"] = original["email"]
    elif draw < 0.78:
        contact["email"] = vary_case(rng, original_address)
    elif draw < 0.82:
        contact["email"] = pad_with_spaces(rng, original_address)
    elif draw < 0.85:
        typo = add_typo(rng, original_address)
        while typo in used_addresses or typo == original_address:
            typo = add_typo(rng, original_address)
        used_addresses.add(typo)
        contact["email"] = typo


def build_contacts(
    records: list[dict[str, str]], customers: dict[str, datetime], new_signups: set[str]
) -> tuple[list[dict[str, str]], set[str]]:
    """Map FEBRL records to contacts and return them with the set of misspelt addresses.

    customers maps an original's contact_id to its first order date. new_signups are
    originals created on the last day of the first event file.
    """
    rng = rng_for("contacts")
    contacts = {record["rec_id"]: contact_from_febrl(record) for record in records}
    originals = sorted(
        (rec_id for rec_id in contacts if rec_id.endswith("-org")), key=person_number
    )
    duplicates = sorted(
        (rec_id for rec_id in contacts if "-dup-" in rec_id),
        key=lambda rec_id: (person_number(rec_id), rec_id),
    )
    used_addresses: set[str] = set()

    for rec_id in originals:
        contact = contacts[rec_id]
        fill_original(rng, contact, used_addresses, require_email=rec_id in new_signups)
        if rec_id in customers:
            created = customers[rec_id] + timedelta(seconds=rng.randrange(86400))
            contact["source"] = "checkout"
            contact["lifecycle_stage"] = "customer"
        elif rec_id in new_signups:
            created = random_time(
                rng, datetime(2026, 11, 29, 13, 0), datetime(2026, 11, 29, 22, 0)
            )
            contact["source"] = "web_form"
            contact["lifecycle_stage"] = "subscriber"
        else:
            created = random_time(rng, CONTACTS_START, CONTACTS_END)
            contact["source"] = weighted_choice(rng, SOURCES)
            contact["lifecycle_stage"] = weighted_choice(rng, LIFECYCLE_STAGES)
        updated = (
            created if rec_id in new_signups else random_time(rng, created, UPDATED_END)
        )
        contact["created_at"] = iso(created)
        contact["updated_at"] = iso(updated)

    misspelt: set[str] = set()
    for rec_id in duplicates:
        contact = contacts[rec_id]
        original = contacts[original_id(rec_id)]
        fill_duplicate(rng, contact, original, used_addresses)
        if contact["email"] and normalize_email(contact["email"]) != normalize_email(
            original["email"]
        ):
            misspelt.add(normalize_email(contact["email"]))
        original_created = datetime.strptime(
            original["created_at"], "%Y-%m-%dT%H:%M:%SZ"
        )
        earliest = original_created + timedelta(days=1)
        created = (
            random_time(rng, earliest, CONTACTS_END)
            if earliest < CONTACTS_END
            else earliest
        )
        contact["created_at"] = iso(created)
        contact["updated_at"] = iso(random_time(rng, created, UPDATED_END))
        contact["source"] = weighted_choice(rng, DUPLICATE_SOURCES)
        if original["lifecycle_stage"] == "customer" and rng.random() < 0.5:
            contact["lifecycle_stage"] = "customer"
        else:
            contact["lifecycle_stage"] = weighted_choice(rng, LIFECYCLE_STAGES)

    # Keep the record order of the FEBRL file.
    return [contacts[record["rec_id"]] for record in records], misspelt


# ---------------------------------------------------------------------------
# Orders


def assign_customers(
    records: list[dict[str, str]], purchases: list[Purchase]
) -> dict[str, str]:
    """Map each CDNOW customer id to a distinct original contact_id."""
    customer_ids = sorted({purchase.customer_id for purchase in purchases})
    originals = sorted(
        (record["rec_id"] for record in records if record["rec_id"].endswith("-org")),
        key=person_number,
    )
    chosen = rng_for("customers").sample(originals, len(customer_ids))
    return dict(zip(customer_ids, chosen))


def build_orders(
    purchases: list[Purchase], contact_by_customer: dict[str, str]
) -> list[dict[str, str]]:
    """Turn CDNOW purchases into orders numbered in date order."""
    ordered = sorted(
        enumerate(purchases),
        key=lambda item: (item[1].purchased_on, item[1].customer_id, item[0]),
    )
    orders = []
    for number, (_, purchase) in enumerate(ordered, start=1):
        day = purchase.purchased_on
        orders.append(
            {
                "order_id": f"O{number:06d}",
                "contact_id": contact_by_customer[purchase.customer_id],
                "ordered_at": f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00Z",
                "amount": purchase.amount,
                "currency": "USD",
                "status": "completed",
                "quantity": purchase.quantity,
                "cdnow_customer_id": purchase.customer_id,
            }
        )
    return orders


# ---------------------------------------------------------------------------
# Email events


@dataclass
class AddressState:
    fate: str  # "dead", "complainer", "unsubscriber" or "normal"
    open_rate: float
    bounce_reason: str
    complained: bool = False
    unsubscribed: bool = False


@dataclass
class Event:
    occurred_at: datetime
    sequence: int  # generation order, breaks ties in occurred_at
    contact_id: str
    email: str
    event_type: str
    bounce_type: str = ""
    reason: str = ""
    campaign_id: str = ""
    event_id: str = field(default="")

    def row(self) -> dict[str, str]:
        return {
            "event_id": self.event_id,
            "contact_id": self.contact_id,
            "email": self.email,
            "event_type": self.event_type,
            "bounce_type": self.bounce_type,
            "reason": self.reason,
            "campaign_id": self.campaign_id,
            "occurred_at": iso(self.occurred_at),
        }


def assign_fates(
    contacts: list[dict[str, str]], misspelt: set[str], new_signups: list[str]
) -> dict[str, AddressState]:
    """Decide per normalized address whether it bounces, complains, unsubscribes or stays normal.

    Misspelt duplicates and the first three new sign-ups are dead addresses. Of the
    other addresses, 1.5% are dead too, 0.15% complain and 0.6% unsubscribe when mailed.
    """
    rng = rng_for("fates")
    signup_addresses = [
        normalize_email(contact["email"])
        for contact in contacts
        if contact["contact_id"] in new_signups
    ]
    addresses = sorted(
        {
            normalize_email(contact["email"])
            for contact in contacts
            if normalize_email(contact["email"])
        }
    )
    available = [
        address
        for address in addresses
        if address not in misspelt and address not in signup_addresses
    ]
    picked = rng.sample(available, round(0.0227 * len(available)))
    dead_count = round(0.015 * len(available))
    complainer_count = round(0.0015 * len(available))
    dead = set(picked[:dead_count]) | misspelt | set(signup_addresses[:3])
    complainers = set(picked[dead_count : dead_count + complainer_count])
    unsubscribers = set(picked[dead_count + complainer_count :])

    real_domains = {domain for _, domain in COMPANIES} | {
        domain for domain, _ in PERSONAL_DOMAINS
    }
    states = {}
    for address in addresses:
        open_rate = weighted_choice(rng, [("0.5", 20), ("0.2", 40), ("0.04", 40)])
        if address.split("@")[1] not in real_domains:
            bounce_reason = rng.choice(DOMAIN_BOUNCE_REASONS)
        else:
            bounce_reason = rng.choice(HARD_BOUNCE_REASONS)
        if address in dead:
            fate = "dead"
        elif address in complainers:
            fate = "complainer"
        elif address in unsubscribers:
            fate = "unsubscriber"
        else:
            fate = "normal"
        states[address] = AddressState(fate, float(open_rate), bounce_reason)
    return states


def seconds(rng: random.Random, low: float, high: float) -> timedelta:
    return timedelta(seconds=rng.randint(int(low), int(high)))


def open_delay(rng: random.Random) -> timedelta:
    """Return the time from delivery to open: most within hours, a few after days."""
    return timedelta(seconds=min(int(rng.expovariate(1 / (8 * 3600))), 10 * 86400))


def simulate_send(
    rng: random.Random,
    contact: dict[str, str],
    campaign: Campaign,
    sent_at: datetime,
    state: AddressState,
    emit,
) -> None:
    """Emit the events that one email to one contact produces."""

    def event(
        moment: datetime, event_type: str, bounce_type: str = "", reason: str = ""
    ) -> None:
        emit(
            moment,
            contact["contact_id"],
            contact["email"],
            event_type,
            bounce_type,
            reason,
            campaign.campaign_id,
        )

    event(sent_at, "sent")
    if state.fate == "dead":
        event(sent_at + seconds(rng, 1, 30), "bounce", "hard", state.bounce_reason)
        return
    draw = rng.random()
    if draw < 0.008:
        event(
            sent_at + seconds(rng, 3600, 6 * 3600),
            "bounce",
            "soft",
            rng.choice(SOFT_BOUNCE_REASONS),
        )
        return
    if draw < 0.011:
        event(
            sent_at + seconds(rng, 1, 20), "bounce", "block", rng.choice(BLOCK_REASONS)
        )
        return
    delivered_at = sent_at + seconds(rng, 2, 40)
    event(delivered_at, "delivered")

    if state.fate == "complainer":
        first = not state.complained
        if rng.random() < (0.8 if first else 0.1):
            complained_at = delivered_at + seconds(rng, 600, 2 * 86400)
            event(complained_at, "complaint", reason=COMPLAINT_REASON)
            # Feedback loops often unsubscribe the address in the same step.
            if first and rng.random() < 0.5:
                event(
                    complained_at + seconds(rng, 0, 2),
                    "unsubscribe",
                    reason="feedback loop",
                )
            state.complained = True
        return

    unsubscribing = state.fate == "unsubscriber" and rng.random() < (
        0.15 if state.unsubscribed else 0.8
    )
    if unsubscribing or rng.random() < state.open_rate:
        opened_at = delivered_at + open_delay(rng)
        event(opened_at, "open")
        if unsubscribing:
            event(
                opened_at + seconds(rng, 5, 300),
                "unsubscribe",
                reason=rng.choice(UNSUBSCRIBE_REASONS),
            )
            state.unsubscribed = True
            return
        if rng.random() < 0.2:
            event(opened_at + seconds(rng, 3600, 3 * 86400), "open")
        if rng.random() < 0.15:
            event(opened_at + seconds(rng, 3, 600), "click")


def simulate_campaigns(
    contacts: list[dict[str, str]], states: dict[str, AddressState]
) -> list[Event]:
    """Simulate every campaign in send order and return all events, unsorted."""
    rng = rng_for("events")
    events: list[Event] = []

    def emit(moment, contact_id, email, event_type, bounce_type, reason, campaign_id):
        events.append(
            Event(
                moment,
                len(events),
                contact_id,
                email,
                event_type,
                bounce_type,
                reason,
                campaign_id,
            )
        )

    mailable = [contact for contact in contacts if normalize_email(contact["email"])]
    for campaign in DAY1_CAMPAIGNS + DAY2_CAMPAIGNS:
        for contact in mailable:
            created = datetime.strptime(contact["created_at"], "%Y-%m-%dT%H:%M:%SZ")
            if campaign.audience_share is None:
                in_audience = (
                    campaign.send_start - timedelta(days=1)
                    <= created
                    < campaign.send_start
                )
            else:
                in_audience = (
                    created < campaign.send_start
                    and rng.random() < campaign.audience_share
                )
            if not in_audience:
                continue
            sent_at = campaign.send_start + seconds(rng, 0, 1800)
            simulate_send(
                rng,
                contact,
                campaign,
                sent_at,
                states[normalize_email(contact["email"])],
                emit,
            )
    return events


def add_redacted_complaints(
    events: list[Event], states: dict[str, AddressState]
) -> None:
    """Add complaints whose recipient address the mailbox provider redacted.

    Two fall in the first file (email '' and '   ') and one in the second (email '').
    They keep the contact_id, so only the email-based suppression misses them.
    """
    rng = rng_for("redacted")
    delivered = [
        event
        for event in events
        if event.event_type == "delivered"
        and states[normalize_email(event.email)].fate == "normal"
    ]
    day1 = [
        event for event in delivered if event.occurred_at < DAY1_END - timedelta(days=3)
    ]
    day2 = [
        event
        for event in delivered
        if DAY1_END <= event.occurred_at < DAY2_END - timedelta(hours=6)
    ]
    for source, email in [
        (rng.choice(day1), ""),
        (rng.choice(day1), "   "),
        (rng.choice(day2), ""),
    ]:
        events.append(
            Event(
                source.occurred_at + seconds(rng, 3600, 5 * 3600),
                len(events),
                source.contact_id,
                email,
                "complaint",
                "",
                COMPLAINT_REASON,
                source.campaign_id,
            )
        )


def pick_late_events(
    rng: random.Random, day1: list[Event], day2_addresses: set[str]
) -> list[Event]:
    """Choose first-file events that instead arrive with the second file.

    The first is the only unsubscribe of one address, so that address is new in the
    second run although its event is older than the first file's last event. The
    second is the middle one of three or more hard bounces of an address outside
    day2_addresses (the addresses mailed in the second file), so the second run
    keeps its last_event_at. The rest are opens and clicks from the last two days.
    """
    # An event at the first file's last instant stays there, so every late event is older.
    last_instant = max(event.occurred_at for event in day1)
    triggers: dict[str, list[Event]] = {}
    for event in sorted(day1, key=lambda e: (e.occurred_at, e.sequence)):
        if trigger_reason(event) and normalize_email(event.email):
            triggers.setdefault(normalize_email(event.email), []).append(event)

    single_unsubscribes = [
        events[0]
        for events in triggers.values()
        if len(events) == 1
        and events[0].event_type == "unsubscribe"
        and events[0].occurred_at < last_instant
    ]
    repeat_bounces = [
        events[len(events) // 2]
        for address, events in triggers.items()
        if len(events) > 2
        and address not in day2_addresses
        and all(trigger_reason(e) == "hard_bounce" for e in events)
    ]
    if not single_unsubscribes or not repeat_bounces:
        sys.exit(
            "error: the simulation produced no unsubscribe or repeat hard bounce to deliver late"
        )
    late = [
        max(single_unsubscribes, key=lambda e: (e.occurred_at, e.sequence)),
        max(repeat_bounces, key=lambda e: (e.occurred_at, e.sequence)),
    ]

    recent = [
        event
        for event in day1
        if LATE_WINDOW_START <= event.occurred_at < last_instant
        and event.event_type in ("open", "click")
    ]
    late.extend(rng.sample(recent, 12))
    return late


def trigger_reason(event: Event) -> str | None:
    if event.event_type == "bounce" and event.bounce_type == "hard":
        return "hard_bounce"
    if event.event_type in ("complaint", "unsubscribe"):
        return event.event_type
    return None


def split_events(events: list[Event]) -> tuple[list[Event], list[Event], list[Event]]:
    """Split events into the two nightly files and number them.

    email_events.csv has the events before DAY1_END minus the late ones.
    email_events_day2.csv has the late ones plus the events before DAY2_END.
    Events after DAY2_END are dropped. Both files are sorted by occurred_at and
    event ids run on from the first file into the second. Returns both files and
    the late events.
    """
    rng = rng_for("late")
    day1 = [event for event in events if event.occurred_at < DAY1_END]
    day2_addresses = {
        normalize_email(event.email)
        for event in events
        if event.occurred_at >= DAY1_END
    }
    late = pick_late_events(rng, day1, day2_addresses)
    late_sequences = {event.sequence for event in late}
    day1 = [event for event in day1 if event.sequence not in late_sequences]
    day2 = late + [
        event for event in events if DAY1_END <= event.occurred_at < DAY2_END
    ]

    day1.sort(key=lambda e: (e.occurred_at, e.sequence))
    day2.sort(key=lambda e: (e.occurred_at, e.sequence))
    for number, event in enumerate(day1 + day2, start=1):
        event.event_id = f"E{number:07d}"
    last_day1 = day1[-1].occurred_at
    if not all(event.occurred_at < last_day1 for event in late):
        sys.exit(
            "error: a late event is not older than the last event of the first file"
        )
    return day1, day2, late


# ---------------------------------------------------------------------------
# Expected suppression figures


@dataclass
class SuppressionRow:
    email: str
    reason: str
    event_id: str
    first_suppressed_at: datetime
    last_event_at: datetime
    event_count: int


def suppress(
    events: list[Event], existing: dict[str, SuppressionRow] | None = None
) -> tuple[dict[str, SuppressionRow], set[str], int]:
    """Run the suppression job's rules over events on top of an existing table.

    Returns the new table, the addresses added by this run and the number of
    triggering events without an email.
    """
    table = {
        address: SuppressionRow(**vars(row))
        for address, row in (existing or {}).items()
    }
    added: set[str] = set()
    without_email = 0
    for event in sorted(events, key=lambda e: (e.occurred_at, e.event_id)):
        reason = trigger_reason(event)
        if reason is None:
            continue
        address = normalize_email(event.email)
        if not address:
            without_email += 1
            continue
        row = table.get(address)
        if row is None:
            table[address] = SuppressionRow(
                event.email,
                reason,
                event.event_id,
                event.occurred_at,
                event.occurred_at,
                1,
            )
            added.add(address)
        else:
            row.last_event_at = max(row.last_event_at, event.occurred_at)
            row.event_count += 1
    return table, added, without_email


def describe_row(address: str, row: SuppressionRow) -> str:
    return (
        f"{address}: email={row.email!r} reason={row.reason} event_id={row.event_id} "
        f"first_suppressed_at={iso(row.first_suppressed_at)} last_event_at={iso(row.last_event_at)} "
        f"event_count={row.event_count}"
    )


EVENT_TYPES = (
    "sent",
    "delivered",
    "open",
    "click",
    "bounce",
    "complaint",
    "unsubscribe",
)


def describe_contacts(contacts: list[dict[str, str]]) -> list[str]:
    originals = sum(1 for c in contacts if c["contact_id"].endswith("-org"))
    with_email = [c for c in contacts if normalize_email(c["email"])]
    addresses = Counter(normalize_email(c["email"]) for c in with_email)
    group_sizes = Counter(original_id(c["contact_id"]) for c in contacts)
    true_pairs = sum(size * (size - 1) // 2 for size in group_sizes.values())
    shared = sum(1 for n in addresses.values() if n > 1)
    varied = sum(1 for c in with_email if c["email"] != normalize_email(c["email"]))
    duplicates = len(contacts) - originals
    return [
        f"contacts.csv: {len(contacts)} rows ({originals} originals, {duplicates} duplicates)",
        f"  true duplicate pairs (same FEBRL person): {true_pairs}",
        f"  with an email after trim: {len(with_email)}, "
        f"distinct normalized addresses: {len(addresses)}",
        f"  addresses shared by several contacts: {shared}",
        f"  emails that differ from lower(trim(email)): {varied}",
    ]


def describe_orders(
    orders: list[dict[str, str]], purchases: list[Purchase]
) -> list[str]:
    cents = sum(int(order["amount"].replace(".", "")) for order in orders)
    contacts = len({order["contact_id"] for order in orders})
    zero = sum(1 for order in orders if order["amount"] == "0.00")
    first = min(order["ordered_at"] for order in orders)
    last = max(order["ordered_at"] for order in orders)
    return [
        f"orders.csv: {len(orders)} rows, {contacts} contacts, "
        f"total amount {cents // 100}.{cents % 100:02d} USD, {zero} orders of 0.00",
        f"  first {first}, last {last}",
    ] + describe_clv_reference(purchases)


def describe_event_file(name: str, events: list[Event]) -> list[str]:
    types = Counter(e.event_type for e in events)
    bounces = Counter(e.bounce_type for e in events if e.event_type == "bounce")
    return [
        f"{name}: {len(events)} rows, "
        f"event_id {events[0].event_id}..{events[-1].event_id}, "
        f"occurred_at {iso(events[0].occurred_at)}..{iso(events[-1].occurred_at)}",
        "  " + ", ".join(f"{t} {types[t]}" for t in EVENT_TYPES),
        "  bounces: "
        + ", ".join(f"{t} {bounces[t]}" for t in ("hard", "soft", "block")),
    ]


def describe_trigger_rates(events: list[Event]) -> list[str]:
    """Describe how many mailed addresses have events of each triggering reason."""
    mailed = {normalize_email(e.email) for e in events if e.event_type == "sent"}
    lines = []
    for reason in TRIGGER_REASONS:
        hit = {
            normalize_email(e.email)
            for e in events
            if trigger_reason(e) == reason and normalize_email(e.email)
        }
        share = 100 * len(hit) / len(mailed)
        lines.append(
            f"  addresses with {reason} events in both files: {len(hit)} "
            f"({share:.2f}% of {len(mailed)} mailed addresses)"
        )
    return lines


def describe_table(
    title: str, table: dict[str, SuppressionRow], added: set[str], without_email: int
) -> list[str]:
    reasons = Counter(row.reason for row in table.values())
    by_reason = ", ".join(f"{r} {reasons[r]}" for r in TRIGGER_REASONS)
    return [
        f"{title}:",
        f"  rows: {len(table)} ({by_reason})",
        f"  sum of event_count: {sum(row.event_count for row in table.values())}",
        f"  rows added by this run (suppression_changes): {len(added)}",
        f"  events_without_email: {without_email}",
    ]


def describe_suppression(
    day1: list[Event], day2: list[Event], late: list[Event]
) -> list[str]:
    """Describe the suppression table after a first run on day1 and a second on day2.

    Exits with an error if the incremental second run differs from one run over
    both files, because data/README.md states that they agree.
    """
    first, first_added, first_without = suppress(day1)
    second, second_added, second_without = suppress(day2, first)
    recomputed, _, _ = suppress(day1 + day2)
    if {a: vars(r) for a, r in recomputed.items()} != {
        a: vars(r) for a, r in second.items()
    }:
        sys.exit("error: the incremental second run differs from a run over both files")

    lines = describe_table(
        "suppression after email_events.csv (first run)",
        first,
        first_added,
        first_without,
    )
    lines += describe_table(
        "suppression after email_events_day2.csv (second run)",
        second,
        second_added,
        second_without,
    )
    updated = [a for a in first if second[a].event_count != first[a].event_count]
    lines.append(f"  addresses from the first run with new events: {len(updated)}")
    last_day1 = day1[-1].occurred_at
    late_new = [a for a in second_added if second[a].first_suppressed_at < last_day1]
    lines.append(
        "  added addresses whose first event is older than the first file's last event: "
        f"{len(late_new)}"
    )
    lines.append(
        "rows after the second run for the addresses of the late triggering events:"
    )
    for event in late:
        if trigger_reason(event):
            address = normalize_email(event.email)
            lines.append(
                f"  {event.event_id} ({event.event_type}, {iso(event.occurred_at)}) -> "
                + describe_row(address, second[address])
            )
    return lines


# Published fits on the CDNOW calibration period, 1997-01-01 to 1997-09-30.
BGNBD_PUBLISHED = (
    0.243,
    4.414,
    0.793,
    2.426,
)  # r, alpha, a, b (Fader, Hardie, Lee 2005)
GAMMA_GAMMA_PUBLISHED = (6.25, 3.74, 15.44)  # p, q, gamma (Fader and Hardie 2013)
CALIBRATION_END = datetime(1997, 9, 30)


@dataclass(frozen=True)
class CalibrationSummary:
    repeat_count: int  # x: purchase days after the first, up to CALIBRATION_END
    recency_weeks: float  # t_x: first to last purchase day
    age_weeks: float  # T: first purchase day to CALIBRATION_END
    repeat_mean: float  # mean amount of the repeat purchase days in USD, 0 if none


def summarize_calibration(purchases: list[Purchase]) -> list[CalibrationSummary]:
    """Summarize each customer's calibration purchases, merged per day as the models require."""
    cents_by_day: dict[str, dict[datetime, int]] = {}
    for purchase in purchases:
        day = datetime.strptime(purchase.purchased_on, "%Y%m%d")
        if day <= CALIBRATION_END:
            days = cents_by_day.setdefault(purchase.customer_id, {})
            days[day] = days.get(day, 0) + int(purchase.amount.replace(".", ""))
    summaries = []
    for customer_id in sorted(cents_by_day):
        days = cents_by_day[customer_id]
        ordered = sorted(days)
        repeats = ordered[1:]
        repeat_mean = (
            sum(days[d] for d in repeats) / len(repeats) / 100 if repeats else 0.0
        )
        summaries.append(
            CalibrationSummary(
                repeat_count=len(repeats),
                recency_weeks=(ordered[-1] - ordered[0]).days / 7,
                age_weeks=(CALIBRATION_END - ordered[0]).days / 7,
                repeat_mean=repeat_mean,
            )
        )
    return summaries


def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def bgnbd_log_likelihood(
    summaries: list[CalibrationSummary], r: float, alpha: float, a: float, b: float
) -> float:
    """Return the BG/NBD log-likelihood of Fader, Hardie and Lee (2005)."""
    total = 0.0
    for c in summaries:
        x = c.repeat_count
        common = math.lgamma(r + x) - math.lgamma(r) + r * math.log(alpha)
        alive = (
            log_beta(a, b + x)
            - log_beta(a, b)
            - (r + x) * math.log(alpha + c.age_weeks)
        )
        if x == 0:
            total += common + alive
            continue
        dropped = (
            log_beta(a + 1, b + x - 1)
            - log_beta(a, b)
            - (r + x) * math.log(alpha + c.recency_weeks)
        )
        larger = max(alive, dropped)
        total += (
            common
            + larger
            + math.log(math.exp(alive - larger) + math.exp(dropped - larger))
        )
    return total


def gamma_gamma_log_likelihood(
    summaries: list[CalibrationSummary], p: float, q: float, gamma: float
) -> float:
    """Return the Gamma-Gamma log-likelihood of the customers with repeat purchases."""
    total = 0.0
    for c in summaries:
        x, mean = c.repeat_count, c.repeat_mean
        if x == 0:
            continue
        total += (
            math.lgamma(p * x + q)
            - math.lgamma(p * x)
            - math.lgamma(q)
            + q * math.log(gamma)
            + (p * x - 1) * math.log(mean)
            + p * x * math.log(x)
            - (p * x + q) * math.log(gamma + mean * x)
        )
    return total


def describe_clv_reference(purchases: list[Purchase]) -> list[str]:
    """Describe the calibration figures that the published CDNOW fits report.

    Fader and Hardie (2013) fit the Gamma-Gamma model on 946 customers with a mean
    repeat spend of 35.08 USD, and Fader, Hardie and Lee (2005) report a BG/NBD
    log-likelihood of -9582.4 at their parameters.
    """
    summaries = summarize_calibration(purchases)
    repeaters = [c for c in summaries if c.repeat_count > 0]
    mean = sum(c.repeat_mean for c in repeaters) / len(repeaters)
    bgnbd = bgnbd_log_likelihood(summaries, *BGNBD_PUBLISHED)
    gamma_gamma = gamma_gamma_log_likelihood(summaries, *GAMMA_GAMMA_PUBLISHED)
    return [
        f"  customers with a repeat purchase by 1997-09-30: {len(repeaters)}, "
        f"mean of their average repeat spend: {mean:.2f} USD",
        f"  BG/NBD log-likelihood at r, alpha, a, b = {BGNBD_PUBLISHED}: {bgnbd:.2f}",
        f"  Gamma-Gamma log-likelihood at p, q, gamma = {GAMMA_GAMMA_PUBLISHED}: "
        f"{gamma_gamma:.2f}",
    ]


# ---------------------------------------------------------------------------
# Output


def format_field(value: str) -> str:
    """Quote a field that contains a delimiter, quote or line break, or starts or ends with a space."""
    if any(ch in value for ch in ',"\r\n') or value != value.strip(" "):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(",".join(columns) + "\n")
        for row in rows:
            handle.write(
                ",".join(format_field(row[column]) for column in columns) + "\n"
            )


def choose_new_signups(records: list[dict[str, str]], customers: set[str]) -> list[str]:
    """Choose four originals without duplicates or orders that sign up on the last day."""
    with_duplicates = {
        original_id(r["rec_id"]) for r in records if "-dup-" in r["rec_id"]
    }
    candidates = sorted(
        (
            r["rec_id"]
            for r in records
            if r["rec_id"].endswith("-org")
            and r["rec_id"] not in customers
            and r["rec_id"] not in with_duplicates
            and r["given_name"]
            and r["surname"]
        ),
        key=person_number,
    )
    return rng_for("signups").sample(candidates, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source",
        nargs="?",
        default=DEFAULT_SOURCE,
        help="folder with febrl/dataset2.csv and cdnow/CDNOW_sample.txt; a relative "
        f"path is resolved from the repository root (default: {DEFAULT_SOURCE})",
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: the folder of this script)"
    )
    args = parser.parse_args()

    source = REPO_ROOT / args.source
    out = Path(args.out) if args.out else Path(__file__).resolve().parent
    febrl_path = source / "febrl" / "dataset2.csv"
    cdnow_path = source / "cdnow" / "CDNOW_sample.txt"
    for path in (febrl_path, cdnow_path):
        if not path.is_file():
            sys.exit(
                f"error: input file not found: {path} (pass the reference data folder as SOURCE)"
            )

    records = read_febrl(febrl_path)
    purchases = read_cdnow(cdnow_path)

    contact_by_customer = assign_customers(records, purchases)
    first_order: dict[str, datetime] = {}
    for purchase in purchases:
        contact_id = contact_by_customer[purchase.customer_id]
        day = datetime.strptime(purchase.purchased_on, "%Y%m%d")
        first_order[contact_id] = min(first_order.get(contact_id, day), day)
    new_signups = choose_new_signups(records, set(first_order))

    contacts, misspelt = build_contacts(records, first_order, set(new_signups))
    orders = build_orders(purchases, contact_by_customer)
    states = assign_fates(contacts, misspelt, new_signups)
    events = simulate_campaigns(contacts, states)
    add_redacted_complaints(events, states)
    day1, day2, late = split_events(events)

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "contacts.csv", CONTACT_COLUMNS, contacts)
    write_csv(out / "orders.csv", ORDER_COLUMNS, orders)
    write_csv(out / "email_events.csv", EVENT_COLUMNS, [event.row() for event in day1])
    write_csv(
        out / "email_events_day2.csv", EVENT_COLUMNS, [event.row() for event in day2]
    )
    lines = describe_contacts(contacts) + describe_orders(orders, purchases)
    lines += describe_event_file("email_events.csv", day1)
    lines += describe_event_file("email_events_day2.csv", day2)
    lines += describe_trigger_rates(day1 + day2)
    lines += describe_suppression(day1, day2, late)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
