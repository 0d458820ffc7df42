//! Deterministic synthetic contacts, email events, activities and orders,
//! streamed to Parquet files chunk by chunk so that memory stays bounded
//! whatever the number of contacts.
//!
//! Rates are set so that the nightly jobs have realistic work. About 2% of
//! addresses hard-bounce, 0.1% complain and 0.5% unsubscribe. 3% of
//! contacts are near-duplicates of the contact before them: the same
//! person with a typo in the first name or another case in the email. 20%
//! of contacts buy, and about a third of buyers buy more than once. Event times fall in the 90 days before the end time,
//! which is fixed (not the clock), so the same seed gives the same files.

use std::path::{Path, PathBuf};

use polars::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::schema::{self, utc_timestamp, ColumnType};

/// Contacts generated per chunk; each chunk becomes one file per table.
pub const CONTACTS_PER_CHUNK: u64 = 100_000;

/// Sizes, seed and output folder of a generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub seed: u64,
    pub contacts: u64,
    /// The mean number of email events per contact.
    pub events_per_contact: u64,
    /// The mean number of activities per contact.
    pub activities_per_contact: u64,
    /// Folder receiving one sub-folder per table.
    pub out: PathBuf,
    /// Events fall in the 90 days before this time (microseconds since the
    /// Unix epoch, UTC).
    pub end_micros: i64,
}

impl GenerateOptions {
    /// Returns options with the default rates, ending 2026-11-30T00:00:00Z.
    pub fn new(seed: u64, contacts: u64, out: impl Into<PathBuf>) -> Self {
        Self {
            seed,
            contacts,
            events_per_contact: 10,
            activities_per_contact: 3,
            out: out.into(),
            end_micros: 1_796_083_200_000_000,
        }
    }
}

/// Rows and files written per table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerateSummary {
    pub contacts: u64,
    pub email_events: u64,
    pub activities: u64,
    pub orders: u64,
    pub files: Vec<String>,
}

const FIRST_NAMES: &[&str] = &[
    "james",
    "mary",
    "robert",
    "patricia",
    "john",
    "jennifer",
    "michael",
    "linda",
    "david",
    "elizabeth",
    "william",
    "barbara",
    "richard",
    "susan",
    "joseph",
    "jessica",
    "thomas",
    "sarah",
    "charles",
    "karen",
    "olivia",
    "liam",
    "emma",
    "noah",
    "amelia",
    "oliver",
    "ava",
    "elijah",
    "sophia",
    "lucas",
    "mia",
    "mateo",
    "isabella",
    "levi",
    "evelyn",
    "ethan",
    "harper",
    "leo",
    "luna",
    "jack",
    "chloe",
    "aiden",
    "zoe",
    "samuel",
    "nora",
    "henry",
    "lily",
    "owen",
    "ella",
    "wei",
    "yuki",
    "priya",
    "arjun",
    "fatima",
    "omar",
    "ana",
    "jose",
    "sofia",
    "lukas",
];
const LAST_NAMES: &[&str] = &[
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "walker",
    "young",
    "allen",
    "king",
    "wright",
    "scott",
    "torres",
    "nguyen",
    "hill",
    "flores",
    "green",
    "adams",
    "nelson",
    "baker",
    "hall",
    "rivera",
    "campbell",
    "mitchell",
    "carter",
    "roberts",
    "muller",
    "schmidt",
    "rossi",
    "kowalski",
];
const FREE_DOMAINS: &[&str] = &[
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "gmx.de",
];
const COUNTRIES: &[&str] = &["US", "US", "US", "GB", "DE", "FR", "AU", "CA", "NL", "IN"];
const CITIES: &[&str] = &[
    "springfield",
    "riverside",
    "franklin",
    "greenville",
    "bristol",
    "clinton",
    "fairview",
    "salem",
    "madison",
    "georgetown",
];
const TITLES: &[&str] = &[
    "marketing manager",
    "vp marketing",
    "cto",
    "software engineer",
    "sales director",
    "analyst",
    "ceo",
    "operations lead",
    "data scientist",
    "account executive",
];
const STAGES: &[&str] = &[
    "subscriber",
    "lead",
    "mql",
    "sql",
    "opportunity",
    "customer",
];
const SOURCES: &[&str] = &["webform", "import", "event", "api", "referral"];
const ACTIVITY_TYPES: &[(&str, f64)] = &[
    ("page_view", 0.70),
    ("form_submit", 0.15),
    ("webinar_attended", 0.08),
    ("demo_request", 0.07),
];
const HARD_BOUNCE_REASONS: &[&str] = &[
    "550 5.1.1 user unknown",
    "550 5.1.10 recipient address rejected",
    "550 5.2.1 mailbox disabled",
];
const SOFT_BOUNCE_REASONS: &[&str] = &["452 4.2.2 mailbox full", "421 4.7.0 try again later"];
const BLOCK_REASONS: &[&str] = &[
    "554 5.7.1 message rejected as spam",
    "550 5.7.606 access denied, banned sending ip",
];

const MICROS_PER_MINUTE: i64 = 60_000_000;
const MICROS_PER_DAY: i64 = 24 * 60 * MICROS_PER_MINUTE;

/// Generates the files of every table into `options.out`.
pub fn generate(
    options: &GenerateOptions,
    mut progress: impl FnMut(u64),
) -> Result<GenerateSummary> {
    if options.contacts == 0 {
        return Err(Error::Config("--contacts must be at least 1".into()));
    }
    let mut summary = GenerateSummary::default();
    for table in ["contacts", "email_events", "activities", "orders"] {
        std::fs::create_dir_all(options.out.join(table)).map_err(|e| {
            Error::Config(format!(
                "cannot create {}: {e}",
                options.out.join(table).display()
            ))
        })?;
    }
    let chunks = options.contacts.div_ceil(CONTACTS_PER_CHUNK);
    for chunk in 0..chunks {
        let start = chunk * CONTACTS_PER_CHUNK;
        let end = (start + CONTACTS_PER_CHUNK).min(options.contacts);
        let mut frames = generate_chunk(options, chunk, start, end)?;
        let names = ["contacts", "email_events", "activities", "orders"];
        for (name, frame) in names.iter().zip(frames.iter_mut()) {
            let path = options
                .out
                .join(name)
                .join(format!("part-{chunk:05}.parquet"));
            write_parquet(&path, frame)?;
            summary.files.push(path.display().to_string());
        }
        summary.contacts += frames[0].height() as u64;
        summary.email_events += frames[1].height() as u64;
        summary.activities += frames[2].height() as u64;
        summary.orders += frames[3].height() as u64;
        progress(end - start);
    }
    Ok(summary)
}

fn write_parquet(path: &Path, frame: &mut DataFrame) -> Result<()> {
    let file = std::fs::File::create(path)
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
    ParquetWriter::new(file).finish(frame)?;
    Ok(())
}

/// Columns of one table under construction.
#[derive(Default)]
struct Columns {
    strings: Vec<(&'static str, Vec<Option<String>>)>,
    times: Vec<(&'static str, Vec<Option<i64>>)>,
    floats: Vec<(&'static str, Vec<Option<f64>>)>,
}

impl Columns {
    /// Creates empty columns for every column of `table`, by type.
    fn of(table: &schema::CanonicalTable) -> Self {
        let named = |kind: ColumnType| {
            table
                .columns
                .iter()
                .filter(move |column| column.kind == kind)
                .map(|column| column.name)
        };
        Self {
            strings: named(ColumnType::String).map(|n| (n, Vec::new())).collect(),
            times: named(ColumnType::Timestamp)
                .map(|n| (n, Vec::new()))
                .collect(),
            floats: named(ColumnType::Float64)
                .map(|n| (n, Vec::new()))
                .collect(),
        }
    }

    fn into_frame(self, order: &[&str]) -> Result<DataFrame> {
        let mut columns: Vec<Column> = Vec::new();
        for name in order {
            if let Some((_, values)) = self.strings.iter().find(|(n, _)| n == name) {
                columns.push(Column::new((*name).into(), values));
            } else if let Some((_, values)) = self.times.iter().find(|(n, _)| n == name) {
                columns.push(Column::new((*name).into(), values).cast(&utc_timestamp())?);
            } else if let Some((_, values)) = self.floats.iter().find(|(n, _)| n == name) {
                columns.push(Column::new((*name).into(), values));
            }
        }
        let height = columns.first().map(|c| c.len()).unwrap_or(0);
        Ok(DataFrame::new(height, columns)?)
    }
}

fn pick<'a>(rng: &mut SmallRng, items: &[&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

/// Introduces one typo: a swapped, dropped or doubled letter.
fn typo(rng: &mut SmallRng, word: &str) -> String {
    let mut chars: Vec<char> = word.chars().collect();
    if chars.len() < 3 {
        return word.to_string();
    }
    let at = rng.gen_range(1..chars.len() - 1);
    match rng.gen_range(0..3) {
        0 => chars.swap(at, at + 1),
        1 => {
            chars.remove(at);
        }
        _ => chars.insert(at, chars[at]),
    }
    chars.into_iter().collect()
}

struct Person {
    first: String,
    last: String,
    email: Option<String>,
    company: String,
    domain: String,
    country: &'static str,
}

fn generate_chunk(
    options: &GenerateOptions,
    chunk: u64,
    start: u64,
    end: u64,
) -> Result<Vec<DataFrame>> {
    let mut rng = SmallRng::seed_from_u64(options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ chunk);
    let window = 90 * MICROS_PER_DAY;
    let window_start = options.end_micros - window;

    let mut contacts = Columns::of(&schema::CONTACTS);
    let mut events = Columns::of(&schema::EMAIL_EVENTS);
    let mut activities = Columns::of(&schema::ACTIVITIES);
    let mut orders = Columns::of(&schema::ORDERS);

    let mut previous: Option<Person> = None;
    for index in start..end {
        let contact_id = format!("C{index:09}");
        // A near-duplicate repeats the previous person with small changes.
        let person = match previous.take() {
            Some(p) if rng.gen_bool(0.03) => {
                let email = p.email.as_ref().map(|e| {
                    if rng.gen_bool(0.5) {
                        e.to_uppercase()
                    } else {
                        format!(" {e}")
                    }
                });
                Person {
                    first: typo(&mut rng, &p.first),
                    last: p.last.clone(),
                    email,
                    company: p.company.clone(),
                    domain: p.domain.clone(),
                    country: p.country,
                }
            }
            _ => {
                let first = pick(&mut rng, FIRST_NAMES).to_string();
                let last = pick(&mut rng, LAST_NAMES).to_string();
                let company_number = rng.gen_range(0..5_000);
                let company = format!("Company {company_number}");
                let domain = format!("company{company_number}.example");
                let mailbox_domain = if rng.gen_bool(0.5) {
                    domain.clone()
                } else {
                    pick(&mut rng, FREE_DOMAINS).to_string()
                };
                let email = rng
                    .gen_bool(0.98)
                    .then(|| format!("{first}.{last}{index}@{mailbox_domain}"));
                Person {
                    first,
                    last,
                    email,
                    company,
                    domain,
                    country: pick(&mut rng, COUNTRIES),
                }
            }
        };
        let created = window_start - rng.gen_range(0..(365 * MICROS_PER_DAY));
        let s = &mut contacts.strings;
        s[0].1.push(Some(contact_id.clone()));
        s[1].1.push(person.email.clone());
        s[2].1.push(Some(capitalise(&person.first)));
        s[3].1.push(Some(capitalise(&person.last)));
        s[4].1.push(
            rng.gen_bool(0.7)
                .then(|| format!("+1555{:07}", rng.gen_range(0..10_000_000))),
        );
        s[5].1.push(Some(person.company.clone()));
        s[6].1.push(Some(person.domain.clone()));
        s[7].1.push(Some(pick(&mut rng, TITLES).to_string()));
        s[8].1.push(Some(person.country.to_string()));
        s[9].1.push(Some(pick(&mut rng, CITIES).to_string()));
        s[10]
            .1
            .push(Some(format!("{:05}", rng.gen_range(1000..99_999))));
        s[11].1.push(Some(pick(&mut rng, SOURCES).to_string()));
        s[12].1.push(Some(pick(&mut rng, STAGES).to_string()));
        contacts.times[0].1.push(Some(created));
        contacts.times[1]
            .1
            .push(Some(created + rng.gen_range(0..window)));

        if let Some(email) = &person.email {
            email_events_for(
                &mut rng,
                options,
                &contact_id,
                email,
                window_start,
                &mut events,
            );
        }
        let activity_count = rng.gen_range(0..=2 * options.activities_per_contact);
        for n in 0..activity_count {
            let roll: f64 = rng.gen();
            let mut acc = 0.0;
            let mut kind = ACTIVITY_TYPES[0].0;
            for (name, share) in ACTIVITY_TYPES {
                acc += share;
                if roll < acc {
                    kind = name;
                    break;
                }
            }
            activities.strings[0]
                .1
                .push(Some(format!("A{index:09}-{n}")));
            activities.strings[1].1.push(Some(contact_id.clone()));
            activities.strings[2].1.push(Some(kind.to_string()));
            activities.times[0]
                .1
                .push(Some(window_start + rng.gen_range(0..window)));
        }
        if rng.gen_bool(0.2) {
            let mut count = 1;
            while rng.gen_bool(0.35) && count < 20 {
                count += 1;
            }
            let spend_level: f64 = rng.gen_range(15.0..80.0);
            for n in 0..count {
                let status = match rng.gen_range(0..100) {
                    0..=91 => "completed",
                    92..=96 => "refunded",
                    _ => "cancelled",
                };
                let amount = (spend_level * rng.gen_range(0.5..1.8) * 100.0).round() / 100.0;
                orders.strings[0].1.push(Some(format!("O{index:09}-{n}")));
                orders.strings[1].1.push(Some(contact_id.clone()));
                orders.strings[2].1.push(Some("USD".into()));
                orders.strings[3].1.push(Some(status.into()));
                orders.times[0].1.push(Some(
                    created + rng.gen_range(0..(options.end_micros - created)),
                ));
                orders.floats[0].1.push(Some(amount));
            }
        }
        previous = Some(person);
    }
    Ok(vec![
        contacts.into_frame(&schema::CONTACTS.column_names())?,
        events.into_frame(&schema::EMAIL_EVENTS.column_names())?,
        activities.into_frame(&schema::ACTIVITIES.column_names())?,
        orders.into_frame(&schema::ORDERS.column_names())?,
    ])
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Appends one contact's email events: sends, deliveries, opens, clicks,
/// and at most one hard bounce (after which the address is not mailed),
/// complaint or unsubscribe.
fn email_events_for(
    rng: &mut SmallRng,
    options: &GenerateOptions,
    contact_id: &str,
    email: &str,
    window_start: i64,
    events: &mut Columns,
) {
    // About 2.4 events per send on average (sent, delivered, some opens and
    // clicks), so this many sends gives the requested mean.
    let mean_sends = (options.events_per_contact as f64 / 2.4).max(1.0);
    let sends = rng.gen_range(1..=(2.0 * mean_sends).round().max(1.0) as u64);
    let hard_bounces = rng.gen_bool(0.02);
    let complains = rng.gen_bool(0.001);
    let unsubscribes = rng.gen_bool(0.005);
    let bounce_at = rng.gen_range(0..sends);
    let leave_at = rng.gen_range(0..sends);
    let step = 90 * MICROS_PER_DAY / (sends as i64 + 1);
    let mut n = 0;
    let mut push = |events: &mut Columns,
                    kind: &str,
                    bounce: Option<&str>,
                    reason: Option<&str>,
                    campaign: u64,
                    at: i64| {
        events.strings[0].1.push(Some(format!("E{contact_id}-{n}")));
        events.strings[1].1.push(Some(contact_id.to_string()));
        events.strings[2].1.push(Some(email.to_string()));
        events.strings[3].1.push(Some(kind.to_string()));
        events.strings[4].1.push(bounce.map(str::to_string));
        events.strings[5].1.push(reason.map(str::to_string));
        events.strings[6].1.push(Some(format!("CMP{campaign:04}")));
        events.times[0].1.push(Some(at));
        n += 1;
    };
    for send in 0..sends {
        let campaign = rng.gen_range(0..500);
        let at = window_start + step * (send as i64 + 1) + rng.gen_range(0..step / 2);
        push(events, "sent", None, None, campaign, at);
        if hard_bounces && send == bounce_at {
            push(
                events,
                "bounce",
                Some("hard"),
                Some(pick(rng, HARD_BOUNCE_REASONS)),
                campaign,
                at + MICROS_PER_MINUTE,
            );
            return;
        }
        match rng.gen_range(0..100) {
            0..=1 => {
                push(
                    events,
                    "bounce",
                    Some("soft"),
                    Some(pick(rng, SOFT_BOUNCE_REASONS)),
                    campaign,
                    at + MICROS_PER_MINUTE,
                );
                continue;
            }
            2 => {
                push(
                    events,
                    "bounce",
                    Some("block"),
                    Some(pick(rng, BLOCK_REASONS)),
                    campaign,
                    at + MICROS_PER_MINUTE,
                );
                continue;
            }
            _ => push(
                events,
                "delivered",
                None,
                None,
                campaign,
                at + MICROS_PER_MINUTE,
            ),
        }
        let opened = rng.gen_bool(0.3);
        if opened {
            let open_at = at + rng.gen_range(MICROS_PER_MINUTE..2 * MICROS_PER_DAY);
            push(events, "open", None, None, campaign, open_at);
            if rng.gen_bool(0.15) {
                push(
                    events,
                    "click",
                    None,
                    None,
                    campaign,
                    open_at + rng.gen_range(0..10 * MICROS_PER_MINUTE),
                );
            }
        }
        if send == leave_at && (complains || unsubscribes) {
            let kind = if complains {
                "complaint"
            } else {
                "unsubscribe"
            };
            push(
                events,
                kind,
                None,
                None,
                campaign,
                at + rng.gen_range(MICROS_PER_MINUTE..3 * MICROS_PER_DAY),
            );
            return;
        }
    }
}
