"""Generate FEBRL-like person records with duplicates, deterministically.

Usage: generate_people.py RECORDS OUT.parquet [--seed 1]

Each person gets an original record `rec-N-org`. About 25% of the people
get 1 to 3 duplicates `rec-N-dup-K` (60%, 30% and 10% of them), so about
27% of the records are duplicates. Each duplicate copies the original and
then applies 1 to 3 corruptions, picked at random from:

- a typo (substitution, deletion, insertion or swap of two neighbouring
  letters) in the first name, the last name, the street name or the city,
- first and last name swapped,
- a missing value in one of the fields,
- a changed date of birth digit, or day and month swapped,
- a changed social security digit,
- a move: a new street number, street, city, postcode and state,
- a new phone number, or a new email address at another provider.

Names follow a Zipf-like frequency: a few very common first and last names
and a long tail made from syllables, as in real populations. Cities come with
a postcode and a state, so a block on postcode holds the people of one city.
The rows are shuffled. The same RECORDS and --seed give the same file.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import polars as pl

COMMON_FIRST_NAMES = (
    "james john robert michael william david richard joseph thomas charles "
    "mary patricia jennifer linda elizabeth barbara susan jessica sarah karen "
    "jack oliver noah liam lucas ethan mason logan lachlan cooper "
    "olivia charlotte ava mia isla grace chloe emily sophie ella "
    "daniel matthew andrew joshua ryan benjamin samuel nicholas alexander luke "
    "emma hannah lily zoe amelia ruby georgia jasmine isabella madison"
).split()

COMMON_LAST_NAMES = (
    "smith jones williams brown wilson taylor johnson white martin anderson "
    "thompson nguyen thomas walker harris lee ryan robinson kelly king "
    "davis wright evans roberts green hall wood jackson clarke patel "
    "campbell mitchell young hughes edwards turner hill moore scott stewart "
    "cooper ward morris baker murphy lewis bennett clark morgan price"
).split()

STREET_TYPES = "street road avenue place crescent drive court lane parade circuit close way".split()
STATES = ["nsw", "vic", "qld", "wa", "sa", "tas", "act", "nt"]
STATE_WEIGHTS = [0.32, 0.26, 0.20, 0.10, 0.07, 0.02, 0.02, 0.01]
EMAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "bigpond.com", "icloud.com", "hotmail.com", "optusnet.com.au", "live.com"]

ONSETS = "b c d f g h j k l m n p r s t v w z br ch cl cr dr fr gr kr pl sh st tr th".split()
VOWELS = "a e i o u ai ea ee ie oo ou ay".split()
CODAS = ["", "", "n", "r", "s", "l", "m", "t", "nd", "rt", "ck", "ll", "ss", "ng"]

FIELDS = [
    "first_name",
    "last_name",
    "date_of_birth",
    "soc_sec_id",
    "street_number",
    "address_1",
    "city",
    "postcode",
    "state",
    "email",
    "phone",
]
CORRUPTIONS = ["typo", "swap_names", "missing", "date_of_birth", "soc_sec_id", "move", "phone", "email"]
CORRUPTION_WEIGHTS = [0.30, 0.06, 0.22, 0.10, 0.08, 0.08, 0.08, 0.08]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def made_up_words(rng: np.random.Generator, count: int, min_syllables: int, max_syllables: int) -> list[str]:
    """Return `count` distinct pronounceable words built from syllables."""
    words: set[str] = set()
    while len(words) < count:
        syllables = rng.integers(min_syllables, max_syllables + 1)
        word = "".join(
            ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] + CODAS[rng.integers(len(CODAS))]
            for _ in range(syllables)
        )
        words.add(word)
    return sorted(words)


def zipf_weights(count: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return weights / weights.sum()


def draw(rng: np.random.Generator, values: list[str], weights: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(values, dtype=object)[rng.choice(len(values), size=size, p=weights)]


def vocabulary(rng: np.random.Generator, people: int) -> dict:
    """Build the name, street and city lists, sized so that larger files get longer tails."""
    tail = max(2000, people // 50)
    first_names = COMMON_FIRST_NAMES + made_up_words(rng, tail // 4, 2, 3)
    last_names = COMMON_LAST_NAMES + made_up_words(rng, tail, 2, 3)
    streets = made_up_words(rng, max(1000, people // 100), 2, 3)
    # About as many towns and postcodes as Australia has, nearly uniform, as in FEBRL's files.
    cities = made_up_words(rng, 2800, 2, 3)
    postcodes = rng.choice(np.arange(800, 10000), size=len(cities), replace=False)
    return {
        "first_names": first_names,
        "first_weights": zipf_weights(len(first_names), 0.7),
        "last_names": last_names,
        "last_weights": zipf_weights(len(last_names), 0.8),
        "streets": streets,
        "cities": cities,
        "city_weights": zipf_weights(len(cities), 0.3),
        "postcodes": [f"{code:04d}" for code in postcodes],
        "states": list(rng.choice(STATES, size=len(cities), p=STATE_WEIGHTS)),
    }


def addresses(rng: np.random.Generator, words: dict, size: int) -> dict[str, np.ndarray]:
    city = rng.choice(len(words["cities"]), size=size, p=words["city_weights"])
    street = np.asarray(words["streets"], dtype=object)[rng.integers(len(words["streets"]), size=size)]
    street_type = np.asarray(STREET_TYPES, dtype=object)[rng.integers(len(STREET_TYPES), size=size)]
    return {
        "street_number": rng.integers(1, 400, size=size).astype(str).astype(object),
        "address_1": street + " " + street_type,
        "city": np.asarray(words["cities"], dtype=object)[city],
        "postcode": np.asarray(words["postcodes"], dtype=object)[city],
        "state": np.asarray(words["states"], dtype=object)[city],
    }


def phones(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.char.add("04", np.char.zfill(rng.integers(0, 10**8, size=size).astype(str), 8)).astype(object)


def emails(rng: np.random.Generator, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    number = rng.integers(1, 1000, size=len(first)).astype(str).astype(object)
    domain = np.asarray(EMAIL_DOMAINS, dtype=object)[rng.integers(len(EMAIL_DOMAINS), size=len(first))]
    return first + "." + last + number + "@" + domain


def originals(rng: np.random.Generator, words: dict, people: int) -> dict[str, np.ndarray]:
    first = draw(rng, words["first_names"], words["first_weights"], people)
    last = draw(rng, words["last_names"], words["last_weights"], people)
    birth = np.datetime64("1930-01-01") + rng.integers(0, 75 * 365, size=people).astype("timedelta64[D]")
    columns = {
        "first_name": first,
        "last_name": last,
        "date_of_birth": np.char.replace(birth.astype(str), "-", "").astype(object),
        "soc_sec_id": rng.integers(1_000_000, 10_000_000, size=people).astype(str).astype(object),
        **addresses(rng, words, people),
        "email": emails(rng, first, last),
        "phone": phones(rng, people),
    }
    # Originals have gaps too, as real files do.
    for name, share in [("email", 0.10), ("phone", 0.15), ("soc_sec_id", 0.03), ("date_of_birth", 0.02)]:
        columns[name][rng.random(people) < share] = None
    return columns


def typo(rng: np.random.Generator, value: str | None) -> str | None:
    if not value or len(value) < 2:
        return value
    position = int(rng.integers(len(value) - 1))
    kind = int(rng.integers(4))
    letter = LETTERS[rng.integers(26)]
    if kind == 0:
        return value[:position] + letter + value[position + 1 :]
    if kind == 1:
        return value[:position] + value[position + 1 :]
    if kind == 2:
        return value[:position] + letter + value[position:]
    return value[:position] + value[position + 1] + value[position] + value[position + 2 :]


def change_digit(rng: np.random.Generator, value: str | None) -> str | None:
    if not value:
        return value
    position = int(rng.integers(len(value)))
    digit = str((int(value[position]) + int(rng.integers(1, 10))) % 10)
    return value[:position] + digit + value[position + 1 :]


def corrupt(rng: np.random.Generator, words: dict, record: dict) -> None:
    """Apply 1 to 3 corruptions to `record` in place."""
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    for kind in rng.choice(CORRUPTIONS, size=count, p=CORRUPTION_WEIGHTS):
        if kind == "typo":
            field = ["first_name", "last_name", "address_1", "city"][rng.integers(4)]
            record[field] = typo(rng, record[field])
        elif kind == "swap_names":
            record["first_name"], record["last_name"] = record["last_name"], record["first_name"]
        elif kind == "missing":
            record[FIELDS[rng.integers(len(FIELDS))]] = None
        elif kind == "date_of_birth":
            value = record["date_of_birth"]
            if value and rng.random() < 0.3 and int(value[6:]) <= 12:
                record["date_of_birth"] = value[:4] + value[6:] + value[4:6]
            else:
                record["date_of_birth"] = change_digit(rng, value)
        elif kind == "soc_sec_id":
            record["soc_sec_id"] = change_digit(rng, record["soc_sec_id"])
        elif kind == "move":
            moved = addresses(rng, words, 1)
            record.update({name: values[0] for name, values in moved.items()})
        elif kind == "phone":
            record["phone"] = phones(rng, 1)[0]
        elif kind == "email" and record["first_name"] and record["last_name"]:
            record["email"] = emails(rng, np.asarray([record["first_name"]], dtype=object), np.asarray([record["last_name"]], dtype=object))[0]


def generate(records: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    # 25% of the people have 1, 2 or 3 duplicates: 0.25 * 1.5 = 0.375 per person.
    people = int(np.ceil(records / 1.375 * 1.01)) + 100
    words = vocabulary(rng, people)
    columns = originals(rng, words, people)
    duplicates = np.where(rng.random(people) < 0.25, rng.choice([1, 2, 3], size=people, p=[0.6, 0.3, 0.1]), 0)
    # Keep whole people only, up to `records` rows; the last few fill the rest as singles.
    total = np.cumsum(1 + duplicates)
    people = int(np.searchsorted(total, records, side="right"))
    duplicates = duplicates[:people]
    singles_needed = records - int(total[people - 1]) if people else records
    extra = np.arange(people, people + singles_needed)
    keep = np.concatenate([np.arange(people), extra])
    duplicates = np.concatenate([duplicates, np.zeros(len(extra), dtype=duplicates.dtype)])
    ids = np.char.add(np.char.add("rec-", keep.astype(str)), "-org").astype(object)
    rows = {"rec_id": list(ids), **{name: list(columns[name][keep]) for name in FIELDS}}
    for index in np.nonzero(duplicates)[0]:
        person = int(keep[index])
        for number in range(int(duplicates[index])):
            record = {name: columns[name][person] for name in FIELDS}
            corrupt(rng, words, record)
            rows["rec_id"].append(f"rec-{person}-dup-{number}")
            for name in FIELDS:
                rows[name].append(record[name])
    frame = pl.DataFrame(rows, schema={name: pl.String for name in ["rec_id", *FIELDS]})
    order = rng.permutation(frame.height)
    return frame[order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=int, help="number of records to write")
    parser.add_argument("out", help="Parquet file to write")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    args = parser.parse_args()
    if args.records < 1:
        sys.exit(f"records must be at least 1, got {args.records}")
    frame = generate(args.records, args.seed)
    frame.write_parquet(args.out)
    duplicates = frame.filter(pl.col("rec_id").str.contains("-dup-")).height
    print(f"wrote {frame.height} records ({duplicates} duplicates) to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
