//! Cron schedules and their fire times in an IANA time zone.
//!
//! A [`Schedule`] is a five-field cron expression (minute, hour, day of month, month, day
//! of week) or a macro such as `@daily`. Its times are wall-clock times in the schedule's
//! time zone, and every fire time is returned as a UTC instant.
//!
//! # Fields
//!
//! Each field is a comma-separated list of values (`5`), ranges (`1-5`), `*` for every
//! value, and steps over a range or `*` (`10-40/10`, `*/15`). Months accept the names
//! `JAN`-`DEC` and days of the week the names `SUN`-`SAT`, in any letter case. Day of week
//! 0 and 7 are both Sunday, and a range may end on `SUN`, so `MON-SUN` is the whole week.
//!
//! When both the day-of-month and the day-of-week field are restricted, a day matches if
//! either field matches: `0 0 13 * FRI` fires on every 13th and on every Friday. A field
//! counts as restricted unless it is exactly `*`, so `*/2` is restricted. When either
//! field is `*`, a day must match both fields.
//!
//! # Daylight saving time
//!
//! Most schedules name fixed wall-clock times, such as `30 2 * * *`. Each such time fires
//! at the first instant at which the local clock reads that time or later:
//!
//! - A wall time that does not exist, because the clocks jump forward over it, fires once
//!   at the instant of the jump. In Europe/Berlin the clocks jump from 02:00 to 03:00 on
//!   2026-03-29, so `30 2 * * *` fires at 03:00 local time (01:00 UTC) that night. All
//!   skipped times of one night collapse into that single fire.
//! - A wall time that occurs twice, because the clocks fall back, fires once at its first
//!   occurrence, which is the earlier UTC instant.
//!
//! Schedules whose hour field matches all 24 hours (`0 * * * *`, `*/15 * * * *`,
//! `@hourly`) follow real time instead: they fire at every instant whose wall-clock time
//! matches. Skipped wall times do not fire and repeated ones fire in both occurrences. In
//! a zone that shifts by one hour, `0 * * * *` therefore fires every 60 minutes of real
//! time, which is 23 times on the spring-forward day and 25 times on the fall-back day.
//! [`Schedule::follows_real_time`] reports which rule a schedule uses.

use std::fmt;

use chrono::{
    DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Utc,
};
use chrono_tz::{GapInfo, Tz};

/// Time zone of a schedule whose time zone name is empty.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// Macros and the five-field expressions they stand for.
const MACROS: [(&str, &str); 8] = [
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@quarterly", "0 0 1 1,4,7,10 *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
];

/// Maximum number of days that a search for a fire time covers. The longest gap between
/// two matching days of a schedule that can fire at all is 29 February across a century
/// year that is not a leap year, such as 2096-02-29 to 2104-02-29, which is 2922 days.
/// Two weeks are added as margin.
const SEARCH_LIMIT_DAYS: u64 = 2922 + 14;

/// Bit set of the 24 hours, which marks a schedule that follows real time.
const ALL_HOURS: u64 = (1 << 24) - 1;

/// Maximum length of each month in days, with February in a leap year.
const MAX_MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One of the five fields of a cron expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CronField {
    /// Minute of the hour, 0-59.
    Minute,
    /// Hour of the day, 0-23.
    Hour,
    /// Day of the month, 1-31.
    DayOfMonth,
    /// Month of the year, 1-12 or `JAN`-`DEC`.
    Month,
    /// Day of the week, 0-7 or `SUN`-`SAT`, where 0 and 7 are Sunday.
    DayOfWeek,
}

impl CronField {
    /// Fields in the order in which a cron expression lists them.
    const ALL: [CronField; 5] = [
        CronField::Minute,
        CronField::Hour,
        CronField::DayOfMonth,
        CronField::Month,
        CronField::DayOfWeek,
    ];

    fn min(self) -> u32 {
        match self {
            CronField::DayOfMonth | CronField::Month => 1,
            CronField::Minute | CronField::Hour | CronField::DayOfWeek => 0,
        }
    }

    /// Largest value that the field accepts.
    fn max(self) -> u32 {
        match self {
            CronField::Minute => 59,
            CronField::Hour => 23,
            CronField::DayOfMonth => 31,
            CronField::Month => 12,
            CronField::DayOfWeek => 7,
        }
    }

    /// Largest value that `*` covers. Day of week stops at 6 because 7 repeats Sunday.
    fn star_max(self) -> u32 {
        match self {
            CronField::DayOfWeek => 6,
            other => other.max(),
        }
    }

    /// Names that the field accepts in place of numbers, the first name standing for
    /// [`CronField::min`].
    fn names(self) -> &'static [&'static str] {
        match self {
            CronField::Month => &MONTH_NAMES,
            CronField::DayOfWeek => &DAY_NAMES,
            CronField::Minute | CronField::Hour | CronField::DayOfMonth => &[],
        }
    }

    /// Description of the values that the field accepts, for error messages.
    fn allowed_values(self) -> &'static str {
        match self {
            CronField::Minute => "a number 0-59",
            CronField::Hour => "a number 0-23",
            CronField::DayOfMonth => "a number 1-31",
            CronField::Month => "a number 1-12 or a month name JAN-DEC",
            CronField::DayOfWeek => "a number 0-7 (0 and 7 are Sunday) or a day name SUN-SAT",
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        };
        formatter.write_str(name)
    }
}

/// Errors of [`Schedule::parse`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CronError {
    /// The expression is neither five fields nor a single macro.
    #[error(
        "invalid cron expression `{expression}`: found {found} fields, expected 5 \
         (minute hour day-of-month month day-of-week) or a macro such as @daily"
    )]
    FieldCount {
        /// The expression as given.
        expression: String,
        /// Number of whitespace-separated fields found.
        found: usize,
    },

    /// The expression starts with `@` but names no known macro.
    #[error(
        "unknown cron macro `{0}`: use @hourly, @daily, @midnight, @weekly, @monthly, \
         @quarterly, @yearly or @annually"
    )]
    UnknownMacro(String),

    /// A macro is followed by further fields.
    #[error("invalid cron expression `{0}`: a macro such as @daily must stand alone")]
    MacroWithFields(String),

    /// A field contains an invalid value, range or step.
    #[error("invalid {field} field `{text}`: {problem}")]
    InvalidField {
        /// The field that failed to parse.
        field: CronField,
        /// The whole text of the field.
        text: String,
        /// Description of the problem and of the values that the field accepts.
        problem: String,
    },

    /// The time zone is not a name in the IANA time zone database.
    #[error("unknown time zone `{name}`: {hint}")]
    UnknownTimeZone {
        /// The name as given.
        name: String,
        /// A suggested IANA name, or the form that such names take.
        hint: String,
    },
}

/// A parsed cron schedule in a time zone.
///
/// Equality compares the expression text, so `@daily` and `0 0 * * *` are different
/// schedules even though they fire at the same times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The expression as given, without surrounding whitespace.
    expression: String,
    time_zone: Tz,
    /// Bit `n` is set when minute `n` matches. The other fields follow the same scheme.
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    /// Bit 0 is Sunday. Day 7 is stored as bit 0.
    days_of_week: u64,
    day_of_month_restricted: bool,
    day_of_week_restricted: bool,
}

/// Selection of the fire times of a day that [`Schedule::fires_on`] must return. A
/// selection of one fire time lets it skip hours that cannot change the result.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    All,
    Earliest,
    Latest,
}

impl Schedule {
    /// Parses a cron expression or macro, evaluated in the IANA time zone `time_zone`.
    ///
    /// An empty `time_zone` selects [`DEFAULT_TIME_ZONE`]. Leading and trailing whitespace
    /// is ignored in both arguments, and macro names are matched in any letter case.
    pub fn parse(expression: &str, time_zone: &str) -> Result<Schedule, CronError> {
        let time_zone = parse_time_zone(time_zone)?;
        let expression = expression.trim();
        let fields: Vec<&str> = expression.split_whitespace().collect();

        let expanded: Vec<&str> = match fields.first() {
            Some(first) if first.starts_with('@') => {
                if fields.len() > 1 {
                    return Err(CronError::MacroWithFields(expression.to_string()));
                }
                let (_, expansion) = MACROS
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(first))
                    .ok_or_else(|| CronError::UnknownMacro(first.to_string()))?;
                expansion.split_whitespace().collect()
            }
            _ => fields,
        };
        if expanded.len() != CronField::ALL.len() {
            return Err(CronError::FieldCount {
                expression: expression.to_string(),
                found: expanded.len(),
            });
        }

        let mut sets = [0u64; 5];
        for ((set, field), text) in sets.iter_mut().zip(CronField::ALL).zip(&expanded) {
            *set = parse_field(field, text)?;
        }

        Ok(Schedule {
            expression: expression.to_string(),
            time_zone,
            minutes: sets[0],
            hours: sets[1],
            days_of_month: sets[2],
            months: sets[3],
            days_of_week: sets[4],
            day_of_month_restricted: expanded[2] != "*",
            day_of_week_restricted: expanded[4] != "*",
        })
    }

    /// Returns the first fire time strictly after `after`.
    ///
    /// Returns `None` when the schedule can never fire (such as `0 0 30 2 *`), or when no
    /// fire time falls within 2936 days (a little over eight years) after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.can_fire() {
            return None;
        }
        let after_date = self.local_date(after);
        // Start two days early, because the fire times of a day can lie after the start
        // of the next local day when a fixed time is pushed past a gap.
        let mut date = after_date
            .checked_sub_days(Days::new(2))
            .unwrap_or(after_date);
        let last = after_date
            .checked_add_days(Days::new(SEARCH_LIMIT_DAYS))
            .unwrap_or(NaiveDate::MAX);

        let mut best: Option<DateTime<Utc>> = None;
        while let Some(found) = self.next_matching_date(date, last) {
            if let Some(best) = best {
                // No fire time of `found` or later days comes before its local midnight.
                match self.first_reach(found.and_time(NaiveTime::MIN)) {
                    Some(day_start) if day_start <= best => {}
                    _ => break,
                }
            }
            let fires = self.fires_on(found, Some(after), best, Pick::Earliest);
            if let Some(&first) = fires.first() {
                best = Some(best.map_or(first, |best| best.min(first)));
            }
            date = match found.succ_opt() {
                Some(next) => next,
                None => break,
            };
        }
        best
    }

    /// Returns the latest fire time at or before `at` and strictly after `since`.
    ///
    /// A scheduler uses this to ask whether a job is due since its last run: any number
    /// of missed fire times collapse into the latest one. Returns `None` when no fire time
    /// falls in the interval, when `since` is not before `at`, or when the only fire times
    /// in the interval lie more than 2936 days (a little over eight years) before `at`.
    pub fn latest_between(&self, since: DateTime<Utc>, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if since >= at || !self.can_fire() {
            return None;
        }
        let at_date = self.local_date(at);
        let since_date = self.local_date(since);
        // Look two days past `at`, because after the clocks fall back across midnight an
        // instant can belong to a local day that ends after the next day has begun.
        let mut date = at_date.checked_add_days(Days::new(2)).unwrap_or(at_date);
        let floor_by_since = since_date
            .checked_sub_days(Days::new(2))
            .unwrap_or(since_date);
        let floor_by_limit = at_date
            .checked_sub_days(Days::new(SEARCH_LIMIT_DAYS))
            .unwrap_or(NaiveDate::MIN);
        let floor = floor_by_since.max(floor_by_limit);

        let mut best: Option<DateTime<Utc>> = None;
        while let Some(found) = self.previous_matching_date(date, floor) {
            if let Some(best) = best {
                // No fire time of `found` or earlier days comes after the next midnight.
                match self.day_end(found) {
                    Some(day_end) if day_end >= best => {}
                    _ => break,
                }
            }
            let lower = best.map_or(since, |best| best.max(since));
            let fires = self.fires_on(found, Some(lower), Some(at), Pick::Latest);
            if let Some(&last) = fires.last() {
                best = Some(best.map_or(last, |best| best.max(last)));
            }
            date = match found.pred_opt() {
                Some(previous) => previous,
                None => break,
            };
        }
        best
    }

    /// Counts the fire times in the interval (`since`, `at`], stopping at `cap`.
    ///
    /// The work grows with the count, so a caller that only reports "more than N" should
    /// pass N + 1 as `cap`. Returns 0 when `since` is not before `at`.
    pub fn count_between(&self, since: DateTime<Utc>, at: DateTime<Utc>, cap: usize) -> usize {
        if cap == 0 || since >= at || !self.can_fire() {
            return 0;
        }
        let since_date = self.local_date(since);
        let at_date = self.local_date(at);
        // Widen by two days on each side for the same reasons as the searches above.
        let mut date = since_date
            .checked_sub_days(Days::new(2))
            .unwrap_or(since_date);
        let last = at_date.checked_add_days(Days::new(2)).unwrap_or(at_date);

        let mut count = 0;
        let mut previous_fires = Vec::new();
        while let Some(found) = self.next_matching_date(date, last) {
            let fires = self.fires_on(found, Some(since), Some(at), Pick::All);
            // Skipped wall times at the end of one day fire at the jump, which can be the
            // instant of the next day's first fire. Count that instant once.
            count += fires
                .iter()
                .filter(|fire| previous_fires.binary_search(*fire).is_err())
                .count();
            previous_fires = fires;
            if count >= cap {
                return cap;
            }
            date = match found.succ_opt() {
                Some(next) => next,
                None => break,
            };
        }
        count
    }

    /// Returns the expression as given to [`Schedule::parse`], without surrounding
    /// whitespace.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Returns the IANA name of the schedule's time zone.
    pub fn time_zone(&self) -> &str {
        self.time_zone.name()
    }

    /// Returns whether the schedule follows real time across daylight-saving changes.
    ///
    /// This holds when the hour field matches all 24 hours. Such a schedule skips wall
    /// times that do not exist and fires twice for wall times that occur twice. Every other
    /// schedule fires once per matching wall time, as the module documentation describes.
    pub fn follows_real_time(&self) -> bool {
        self.hours == ALL_HOURS
    }

    /// Returns whether any calendar day matches the day and month fields.
    fn can_fire(&self) -> bool {
        // Every month contains every day of the week, so a restricted day-of-week field
        // always matches some day, alone or through the either-field rule.
        if self.day_of_week_restricted {
            return true;
        }
        (1..=12u32)
            .filter(|&month| has_bit(self.months, month))
            .any(|month| {
                (1..=MAX_MONTH_DAYS[month as usize - 1]).any(|day| has_bit(self.days_of_month, day))
            })
    }

    fn matches_date(&self, date: NaiveDate) -> bool {
        if !has_bit(self.months, date.month()) {
            return false;
        }
        let day_of_month = has_bit(self.days_of_month, date.day());
        let day_of_week = has_bit(self.days_of_week, date.weekday().num_days_from_sunday());
        if self.day_of_month_restricted && self.day_of_week_restricted {
            day_of_month || day_of_week
        } else {
            day_of_month && day_of_week
        }
    }

    /// Returns the first matching date from `date` through `last`, skipping whole months
    /// that the month field excludes.
    fn next_matching_date(&self, mut date: NaiveDate, last: NaiveDate) -> Option<NaiveDate> {
        while date <= last {
            if !has_bit(self.months, date.month()) {
                date = first_of_next_month(date)?;
                continue;
            }
            if self.matches_date(date) {
                return Some(date);
            }
            date = date.succ_opt()?;
        }
        None
    }

    /// Returns the last matching date from `date` back through `first`, skipping whole
    /// months that the month field excludes.
    fn previous_matching_date(&self, mut date: NaiveDate, first: NaiveDate) -> Option<NaiveDate> {
        while date >= first {
            if !has_bit(self.months, date.month()) {
                date = date.with_day(1)?.pred_opt()?;
                continue;
            }
            if self.matches_date(date) {
                return Some(date);
            }
            date = date.pred_opt()?;
        }
        None
    }

    /// Collects the fire times that the wall times of the local `date` produce within
    /// (`lower`, `upper`], sorted and without duplicates. The caller checks that `date`
    /// matches.
    ///
    /// With [`Pick::Earliest`] or [`Pick::Latest`] the result may omit fire times other
    /// than the first or last, which lets the search skip most hours of the day.
    fn fires_on(
        &self,
        date: NaiveDate,
        lower: Option<DateTime<Utc>>,
        upper: Option<DateTime<Utc>>,
        pick: Pick,
    ) -> Vec<DateTime<Utc>> {
        let (mut lower, mut upper) = (lower, upper);
        let day_start = self.first_reach(date.and_time(NaiveTime::MIN));
        let day_end = self.day_end(date);
        if upper.is_some_and(|upper| day_start.is_none_or(|start| start > upper))
            || lower.is_some_and(|lower| day_end.is_none_or(|end| end <= lower))
        {
            return Vec::new();
        }
        // Bounds that the whole day satisfies need no checks per hour.
        if lower.is_some_and(|lower| day_start.is_some_and(|start| start > lower)) {
            lower = None;
        }
        if upper.is_some_and(|upper| day_end.is_some_and(|end| end <= upper)) {
            upper = None;
        }

        let mut hours: Vec<u32> = (0..24).filter(|&hour| has_bit(self.hours, hour)).collect();
        if pick == Pick::Latest {
            hours.reverse();
        }
        let mut fires = Vec::new();
        for hour in hours {
            let Some(hour_start) = date.and_hms_opt(hour, 0, 0) else {
                continue;
            };
            if !self.hour_overlaps(hour_start, lower, upper) {
                continue;
            }
            let mut hour_fires = Vec::new();
            for minute in (0..60).filter(|&minute| has_bit(self.minutes, minute)) {
                let wall = hour_start + TimeDelta::minutes(i64::from(minute));
                self.push_fires(wall, &mut hour_fires);
            }
            hour_fires.retain(|&fire| {
                lower.is_none_or(|lower| fire > lower) && upper.is_none_or(|upper| fire <= upper)
            });
            // The remaining hours only matter if they can beat the best fire time so far.
            match pick {
                Pick::All => {}
                Pick::Earliest => {
                    if let Some(&earliest) = hour_fires.iter().min() {
                        upper = Some(earliest);
                    }
                }
                Pick::Latest => {
                    if let Some(&latest) = hour_fires.iter().max() {
                        lower = Some(latest);
                    }
                }
            }
            fires.append(&mut hour_fires);
        }
        fires.sort_unstable();
        fires.dedup();
        fires
    }

    /// Returns whether the wall-clock hour starting at `hour_start` can produce a fire time
    /// within (`lower`, `upper`]. Its fire times lie between the first instant at which the
    /// clock reads `hour_start` and the last instant before it reads the next hour.
    fn hour_overlaps(
        &self,
        hour_start: NaiveDateTime,
        lower: Option<DateTime<Utc>>,
        upper: Option<DateTime<Utc>>,
    ) -> bool {
        if let Some(upper) = upper {
            match self.first_reach(hour_start) {
                Some(start) if start <= upper => {}
                _ => return false,
            }
        }
        if let Some(lower) = lower {
            let next_hour = hour_start.checked_add_signed(TimeDelta::hours(1));
            match next_hour.and_then(|next_hour| self.last_reach(next_hour)) {
                Some(end) if end > lower => {}
                _ => return false,
            }
        }
        true
    }

    /// Appends the fire times of one matching wall time, following the daylight-saving
    /// rules of the module documentation.
    fn push_fires(&self, wall: NaiveDateTime, fires: &mut Vec<DateTime<Utc>>) {
        if !self.follows_real_time() {
            fires.extend(self.first_reach(wall));
            return;
        }
        match self.time_zone.from_local_datetime(&wall) {
            LocalResult::Single(instant) => fires.push(instant.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, second) => {
                fires.push(first.with_timezone(&Utc));
                fires.push(second.with_timezone(&Utc));
            }
            LocalResult::None => {}
        }
    }

    /// Returns the first instant at which the local clock reads `wall` or later. That is
    /// the only occurrence of `wall`, the first of two occurrences, or the end of the gap
    /// when the clocks jump over `wall`.
    fn first_reach(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.time_zone.from_local_datetime(&wall) {
            LocalResult::Single(instant) => Some(instant.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, second) => Some(first.min(second).with_timezone(&Utc)),
            LocalResult::None => self.gap_end(wall),
        }
    }

    /// Returns the last occurrence of `wall`, or the end of the gap when the clocks jump
    /// over `wall`. Every instant at which the clock reads earlier than `wall` comes no
    /// later than this, given one clock change at a time around `wall`.
    fn last_reach(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.time_zone.from_local_datetime(&wall) {
            LocalResult::Single(instant) => Some(instant.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, second) => Some(first.max(second).with_timezone(&Utc)),
            LocalResult::None => self.gap_end(wall),
        }
    }

    /// Returns an upper bound on the fire times of the local `date`: the last reach of the
    /// following midnight.
    fn day_end(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        let next_midnight = date.succ_opt()?.and_time(NaiveTime::MIN);
        self.last_reach(next_midnight)
    }

    /// Returns the instant at which the clocks jump over the nonexistent wall time `wall`.
    fn gap_end(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        let gap = GapInfo::new(&wall, &self.time_zone)?;
        gap.end.map(|end| end.with_timezone(&Utc))
    }

    /// Returns the local wall-clock time at `instant`, or `None` when it lies outside the
    /// range of [`NaiveDateTime`], where [`DateTime::naive_local`] of chrono 0.4.45 panics.
    fn local_wall_clock(&self, instant: DateTime<Utc>) -> Option<NaiveDateTime> {
        let utc = instant.naive_utc();
        let offset = self.time_zone.offset_from_utc_datetime(&utc).fix();
        utc.checked_add_offset(offset)
    }

    /// Returns the local date at `instant`. Near the ends of the supported range, where
    /// the local date may not exist, it returns the UTC date, which is at most a day off.
    /// The searches widen their date range by two days to absorb that.
    fn local_date(&self, instant: DateTime<Utc>) -> NaiveDate {
        self.local_wall_clock(instant)
            .map_or_else(|| instant.date_naive(), |local| local.date())
    }
}

impl fmt::Display for Schedule {
    /// Formats the schedule as its expression followed by its time zone, such as
    /// `30 2 * * * (Europe/Berlin)`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({})", self.expression, self.time_zone.name())
    }
}

fn has_bit(set: u64, value: u32) -> bool {
    value < 64 && set & (1 << value) != 0
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year().checked_add(1)?, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
}

fn parse_time_zone(name: &str) -> Result<Tz, CronError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Ok(Tz::UTC);
    }
    trimmed
        .parse::<Tz>()
        .map_err(|_| CronError::UnknownTimeZone {
            name: name.to_string(),
            hint: time_zone_hint(trimmed),
        })
}

/// Suggests the IANA name that `name` most likely means: the same name in other letter
/// case, or a name whose last part is `name`, such as Europe/Berlin for `Berlin`.
fn time_zone_hint(name: &str) -> String {
    let underscored = name.replace(' ', "_");
    let names = || chrono_tz::TZ_VARIANTS.iter().map(|zone| zone.name());
    let suggestion = names()
        .find(|candidate| candidate.eq_ignore_ascii_case(&underscored))
        .or_else(|| {
            names().find(|candidate| {
                candidate
                    .rsplit('/')
                    .next()
                    .is_some_and(|city| city.eq_ignore_ascii_case(&underscored))
            })
        });
    match suggestion {
        Some(suggestion) => format!("did you mean `{suggestion}`?"),
        None => "use an IANA time zone name such as Europe/Berlin or America/New_York".to_string(),
    }
}

/// Parses one field into a bit set of the values it matches.
fn parse_field(field: CronField, text: &str) -> Result<u64, CronError> {
    let mut set = 0;
    for item in text.split(',') {
        set |= parse_item(field, item).map_err(|problem| CronError::InvalidField {
            field,
            text: text.to_string(),
            problem,
        })?;
    }
    if field == CronField::DayOfWeek && has_bit(set, 7) {
        set = (set & !(1 << 7)) | 1;
    }
    Ok(set)
}

/// Parses one list item of a field: a value, a range or `*`, each optionally with a step.
/// The error is the problem text of [`CronError::InvalidField`].
fn parse_item(field: CronField, item: &str) -> Result<u64, String> {
    if item.is_empty() {
        return Err("the list contains an empty item".to_string());
    }
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(step)?)),
        None => (item, None),
    };

    let (start, end) = if range == "*" {
        (field.min(), field.star_max())
    } else if let Some((start_text, end_text)) = range.split_once('-') {
        if start_text.is_empty() || end_text.is_empty() {
            return Err(format!("range `{range}` is missing a value"));
        }
        let start = parse_value(field, start_text)?;
        let mut end = parse_value(field, end_text)?;
        // Sunday is 0, so a range such as MON-SUN ends on 7.
        if field == CronField::DayOfWeek && end == 0 && start > 0 {
            end = 7;
        }
        if start > end {
            return Err(format!(
                "range `{range}` starts after it ends, so write the smaller value first"
            ));
        }
        (start, end)
    } else {
        let value = parse_value(field, range)?;
        if let Some(step) = step {
            return Err(format!(
                "step `{item}` applies to a single value, so write a range such as `{value}-{max}/{step}` or `*/{step}`",
                max = field.max(),
            ));
        }
        (value, value)
    };

    let step = step.unwrap_or(1);
    let mut set = 0;
    let mut value = Some(start);
    while let Some(current) = value.filter(|&current| current <= end) {
        set |= 1 << current;
        value = current.checked_add(step);
    }
    Ok(set)
}

fn parse_step(text: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("step `{text}` is not a positive whole number"));
    }
    // A step beyond the range selects only the range start, so saturating is exact.
    let step = text.parse::<u32>().unwrap_or(u32::MAX);
    if step == 0 {
        return Err("the step must be at least 1, found 0".to_string());
    }
    Ok(step)
}

fn parse_value(field: CronField, text: &str) -> Result<u32, String> {
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        let in_range = text
            .parse::<u32>()
            .ok()
            .filter(|value| (field.min()..=field.max()).contains(value));
        return in_range.ok_or_else(|| {
            format!(
                "value {text} is out of range, expected {}",
                field.allowed_values()
            )
        });
    }
    let position = field
        .names()
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text));
    match position {
        Some(index) => Ok(field.min() + index as u32),
        None => Err(format!(
            "`{text}` is not a valid value, expected {}",
            field.allowed_values()
        )),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Timelike;

    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse()
            .unwrap_or_else(|error| panic!("invalid test instant {text}: {error}"))
    }

    fn schedule(expression: &str, time_zone: &str) -> Schedule {
        Schedule::parse(expression, time_zone)
            .unwrap_or_else(|error| panic!("`{expression}` in {time_zone}: {error}"))
    }

    fn parse_error(expression: &str, time_zone: &str) -> CronError {
        match Schedule::parse(expression, time_zone) {
            Ok(parsed) => panic!("`{expression}` in {time_zone} parsed as {parsed:?}"),
            Err(error) => error,
        }
    }

    /// Values whose bits are set in a field's bit set.
    fn values(set: u64) -> Vec<u32> {
        (0..64).filter(|&value| has_bit(set, value)).collect()
    }

    /// Fire times in (`since`, `until`], found by repeated `next_after`.
    fn fires_between(
        schedule: &Schedule,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let mut fires = Vec::new();
        let mut current = since;
        while let Some(next) = schedule.next_after(current) {
            if next > until {
                break;
            }
            assert!(next > current, "{schedule}: {next} is not after {current}");
            fires.push(next);
            current = next;
        }
        fires
    }

    fn instants(texts: &[&str]) -> Vec<DateTime<Utc>> {
        texts.iter().map(|text| utc(text)).collect()
    }

    // Parsing of fields.

    #[test]
    fn parse_steps_and_ranges() {
        let parsed = schedule("*/15 9-17/4 1-5 */3 *", "");
        assert_eq!(values(parsed.minutes), [0, 15, 30, 45]);
        assert_eq!(values(parsed.hours), [9, 13, 17]);
        assert_eq!(values(parsed.days_of_month), [1, 2, 3, 4, 5]);
        assert_eq!(values(parsed.months), [1, 4, 7, 10]);
        assert_eq!(values(parsed.days_of_week), [0, 1, 2, 3, 4, 5, 6]);

        let parsed = schedule("10-20/5,1,3,59 0 * * *", "");
        assert_eq!(values(parsed.minutes), [1, 3, 10, 15, 20, 59]);

        let parsed = schedule("*/90 */7 */40 * *", "");
        assert_eq!(values(parsed.minutes), [0]);
        assert_eq!(values(parsed.hours), [0, 7, 14, 21]);
        assert_eq!(values(parsed.days_of_month), [1]);

        let parsed = schedule("05 007 * * *", "");
        assert_eq!(values(parsed.minutes), [5]);
        assert_eq!(values(parsed.hours), [7]);
    }

    #[test]
    fn parse_names_any_case() {
        let parsed = schedule("0 0 * jan-Mar,DEC mon-FRI", "");
        assert_eq!(values(parsed.months), [1, 2, 3, 12]);
        assert_eq!(values(parsed.days_of_week), [1, 2, 3, 4, 5]);

        let parsed = schedule("0 0 * * Sun,sat", "");
        assert_eq!(values(parsed.days_of_week), [0, 6]);

        let parsed = schedule("0 0 * may-aug/2 *", "");
        assert_eq!(values(parsed.months), [5, 7]);
    }

    #[test]
    fn parse_sunday_as_seven() {
        let seven = schedule("0 0 * * 7", "");
        let zero = schedule("0 0 * * 0", "");
        assert_eq!(values(seven.days_of_week), [0]);
        assert_eq!(seven.days_of_week, zero.days_of_week);

        assert_eq!(values(schedule("0 0 * * 5-7", "").days_of_week), [0, 5, 6]);
        assert_eq!(
            values(schedule("0 0 * * 0-7", "").days_of_week),
            [0, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            values(schedule("0 0 * * MON-SUN", "").days_of_week),
            [0, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            values(schedule("0 0 * * FRI-SUN", "").days_of_week),
            [0, 5, 6]
        );

        // 2026-03-10 is a Tuesday, so the next Sunday is 2026-03-15.
        let sunday = seven.next_after(utc("2026-03-10T12:00:00Z"));
        assert_eq!(sunday, Some(utc("2026-03-15T00:00:00Z")));
    }

    #[test]
    fn macros_expand_to_fields() {
        for (name, expansion) in MACROS {
            let from_macro = schedule(name, "Europe/Berlin");
            let from_fields = schedule(expansion, "Europe/Berlin");
            assert_eq!(from_macro.minutes, from_fields.minutes, "{name}");
            assert_eq!(from_macro.hours, from_fields.hours, "{name}");
            assert_eq!(
                from_macro.days_of_month, from_fields.days_of_month,
                "{name}"
            );
            assert_eq!(from_macro.months, from_fields.months, "{name}");
            assert_eq!(from_macro.days_of_week, from_fields.days_of_week, "{name}");
            assert_eq!(
                from_macro.day_of_month_restricted, from_fields.day_of_month_restricted,
                "{name}"
            );
            assert_eq!(
                from_macro.day_of_week_restricted, from_fields.day_of_week_restricted,
                "{name}"
            );
            assert_eq!(from_macro.expression(), name);
        }
        assert_eq!(schedule("@DAILY", "").expression(), "@DAILY");
    }

    #[test]
    fn macros_fire_times() {
        // 2026-03-10 is a Tuesday.
        let start = utc("2026-03-10T10:20:00Z");
        let cases = [
            ("@hourly", "2026-03-10T11:00:00Z"),
            ("@daily", "2026-03-11T00:00:00Z"),
            ("@midnight", "2026-03-11T00:00:00Z"),
            ("@weekly", "2026-03-15T00:00:00Z"),
            ("@monthly", "2026-04-01T00:00:00Z"),
            ("@quarterly", "2026-04-01T00:00:00Z"),
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@annually", "2027-01-01T00:00:00Z"),
        ];
        for (name, expected) in cases {
            assert_eq!(
                schedule(name, "UTC").next_after(start),
                Some(utc(expected)),
                "{name}"
            );
        }

        let quarterly = schedule("@quarterly", "UTC");
        let fires = fires_between(
            &quarterly,
            utc("2026-01-15T00:00:00Z"),
            utc("2027-01-01T00:00:00Z"),
        );
        let expected = instants(&[
            "2026-04-01T00:00:00Z",
            "2026-07-01T00:00:00Z",
            "2026-10-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
        ]);
        assert_eq!(fires, expected);

        // Midnight in Berlin is 23:00 UTC the day before in winter.
        let daily_berlin = schedule("@daily", "Europe/Berlin");
        let next = daily_berlin.next_after(start);
        assert_eq!(next, Some(utc("2026-03-10T23:00:00Z")));
    }

    // Day matching.

    #[test]
    fn day_fields_either_matches() {
        // Both fields restricted: the 13th or any Monday. 2026-02-13 and 2026-03-13 are
        // Fridays.
        let either = schedule("0 0 13 * MON", "UTC");
        let fires = fires_between(
            &either,
            utc("2026-02-01T00:00:00Z"),
            utc("2026-03-31T23:59:00Z"),
        );
        let expected = instants(&[
            "2026-02-02T00:00:00Z",
            "2026-02-09T00:00:00Z",
            "2026-02-13T00:00:00Z",
            "2026-02-16T00:00:00Z",
            "2026-02-23T00:00:00Z",
            "2026-03-02T00:00:00Z",
            "2026-03-09T00:00:00Z",
            "2026-03-13T00:00:00Z",
            "2026-03-16T00:00:00Z",
            "2026-03-23T00:00:00Z",
            "2026-03-30T00:00:00Z",
        ]);
        assert_eq!(fires, expected);
    }

    #[test]
    fn day_fields_with_star_must_both_match() {
        let since = utc("2026-02-01T00:00:00Z");
        let until = utc("2026-03-31T23:59:00Z");

        let day_of_month_only = schedule("0 0 13 * *", "UTC");
        let expected = instants(&["2026-02-13T00:00:00Z", "2026-03-13T00:00:00Z"]);
        assert_eq!(fires_between(&day_of_month_only, since, until), expected);

        let day_of_week_only = schedule("0 0 * * MON", "UTC");
        let mondays = fires_between(&day_of_week_only, since, until);
        assert_eq!(mondays.len(), 9);
        assert!(mondays
            .iter()
            .all(|fire| fire.weekday() == chrono::Weekday::Mon));
    }

    #[test]
    fn day_of_month_step_is_restricted() {
        // `*/10` is not a bare `*`, so the either-field rule applies: days 1, 11, 21 and
        // 31, or any Monday.
        let stepped = schedule("0 0 */10 * MON", "UTC");
        assert!(stepped.day_of_month_restricted);
        let fires = fires_between(
            &stepped,
            utc("2026-03-01T00:00:00Z"),
            utc("2026-03-31T23:59:00Z"),
        );
        let days: Vec<u32> = fires.iter().map(|fire| fire.day()).collect();
        assert_eq!(days, [2, 9, 11, 16, 21, 23, 30, 31]);
    }

    #[test]
    fn february_29_waits_for_leap_year() {
        let leap = schedule("0 0 29 2 *", "UTC");
        let next = leap.next_after(utc("2026-01-01T00:00:00Z"));
        assert_eq!(next, Some(utc("2028-02-29T00:00:00Z")));

        // 2100 is not a leap year, so the gap is eight years.
        let across_century = leap.next_after(utc("2096-03-01T00:00:00Z"));
        assert_eq!(across_century, Some(utc("2104-02-29T00:00:00Z")));

        let latest = leap.latest_between(utc("2097-01-01T00:00:00Z"), utc("2104-03-01T00:00:00Z"));
        assert_eq!(latest, Some(utc("2104-02-29T00:00:00Z")));
        let none = leap.latest_between(utc("2097-01-01T00:00:00Z"), utc("2104-01-01T00:00:00Z"));
        assert_eq!(none, None);

        let count = leap.count_between(
            utc("2024-01-01T00:00:00Z"),
            utc("2033-01-01T00:00:00Z"),
            100,
        );
        assert_eq!(count, 3);
    }

    #[test]
    fn impossible_dates_never_fire() {
        let since = utc("2026-01-01T00:00:00Z");
        let far = utc("2400-01-01T00:00:00Z");
        for expression in [
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 31 FEB *",
            "* * 30-31 2 *",
        ] {
            let impossible = schedule(expression, "Europe/Berlin");
            assert_eq!(impossible.next_after(since), None, "{expression}");
            assert_eq!(impossible.latest_between(since, far), None, "{expression}");
            assert_eq!(
                impossible.count_between(since, far, 1000),
                0,
                "{expression}"
            );
            let from_start =
                impossible.count_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, 10);
            assert_eq!(from_start, 0, "{expression}");
        }

        // A restricted day of week makes the day of month an alternative, not a condition.
        let monday_or_30_february = schedule("0 0 30 2 MON", "UTC");
        let next = monday_or_30_february.next_after(utc("2026-02-01T00:00:00Z"));
        assert_eq!(next, Some(utc("2026-02-02T00:00:00Z")));
    }

    // Daylight saving time with fixed wall times.

    #[test]
    fn berlin_spring_forward_fires_once_at_jump() {
        // On 2026-03-29 the clocks jump from 02:00 CET to 03:00 CEST (01:00 UTC).
        let daily = schedule("30 2 * * *", "Europe/Berlin");
        let fires = fires_between(
            &daily,
            utc("2026-03-27T12:00:00Z"),
            utc("2026-03-31T12:00:00Z"),
        );
        let expected = instants(&[
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z",
            "2026-03-31T00:30:00Z",
        ]);
        assert_eq!(fires, expected);

        let night = daily.count_between(
            utc("2026-03-28T20:00:00Z"),
            utc("2026-03-29T08:00:00Z"),
            100,
        );
        assert_eq!(night, 1);
    }

    #[test]
    fn berlin_fall_back_fires_first_occurrence() {
        // On 2026-10-25 the clocks fall back from 03:00 CEST to 02:00 CET (01:00 UTC), so
        // 02:30 occurs at 00:30 UTC and again at 01:30 UTC.
        let daily = schedule("30 2 * * *", "Europe/Berlin");
        let fires = fires_between(
            &daily,
            utc("2026-10-23T12:00:00Z"),
            utc("2026-10-27T12:00:00Z"),
        );
        let expected = instants(&[
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
            "2026-10-27T01:30:00Z",
        ]);
        assert_eq!(fires, expected);

        let after_first = daily.next_after(utc("2026-10-25T00:30:00Z"));
        assert_eq!(after_first, Some(utc("2026-10-26T01:30:00Z")));
        let night = daily.count_between(
            utc("2026-10-24T20:00:00Z"),
            utc("2026-10-25T08:00:00Z"),
            100,
        );
        assert_eq!(night, 1);
    }

    #[test]
    fn new_york_spring_forward_fires_once_at_jump() {
        // On 2026-03-08 the clocks jump from 02:00 EST to 03:00 EDT (07:00 UTC).
        let daily = schedule("30 2 * * *", "America/New_York");
        let fires = fires_between(
            &daily,
            utc("2026-03-06T12:00:00Z"),
            utc("2026-03-09T12:00:00Z"),
        );
        let expected = instants(&[
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z",
        ]);
        assert_eq!(fires, expected);

        let night = daily.count_between(
            utc("2026-03-08T03:00:00Z"),
            utc("2026-03-08T15:00:00Z"),
            100,
        );
        assert_eq!(night, 1);
    }

    #[test]
    fn new_york_fall_back_fires_once() {
        // On 2026-11-01 the clocks fall back from 02:00 EDT to 01:00 EST (06:00 UTC), so
        // 02:30 occurs once (EST) and 01:30 occurs twice.
        let half_past_two = schedule("30 2 * * *", "America/New_York");
        let fires = fires_between(
            &half_past_two,
            utc("2026-10-30T12:00:00Z"),
            utc("2026-11-02T12:00:00Z"),
        );
        let expected = instants(&[
            "2026-10-31T06:30:00Z",
            "2026-11-01T07:30:00Z",
            "2026-11-02T07:30:00Z",
        ]);
        assert_eq!(fires, expected);

        let half_past_one = schedule("30 1 * * *", "America/New_York");
        let fires = fires_between(
            &half_past_one,
            utc("2026-10-30T12:00:00Z"),
            utc("2026-11-02T12:00:00Z"),
        );
        let expected = instants(&[
            "2026-10-31T05:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z",
        ]);
        assert_eq!(fires, expected);

        let second_occurrence = utc("2026-11-01T06:30:00Z");
        let latest = half_past_one.latest_between(utc("2026-11-01T05:30:00Z"), second_occurrence);
        assert_eq!(latest, None);
        let night = half_past_one.count_between(
            utc("2026-11-01T00:00:00Z"),
            utc("2026-11-01T12:00:00Z"),
            100,
        );
        assert_eq!(night, 1);
    }

    #[test]
    fn skipped_times_collapse_into_one_fire() {
        // 02:00, 02:20 and 02:40 do not exist in Berlin on 2026-03-29. All three fire as
        // one at the jump, and the time after it keeps its own fire.
        let night = schedule("*/20 2,3 * * *", "Europe/Berlin");
        let fires = fires_between(
            &night,
            utc("2026-03-28T22:00:00Z"),
            utc("2026-03-29T04:00:00Z"),
        );
        let expected = instants(&[
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:20:00Z",
            "2026-03-29T01:40:00Z",
        ]);
        assert_eq!(fires, expected);
        assert!(!night.follows_real_time());
    }

    #[test]
    fn every_two_hours_skips_repeated_hour() {
        // Fixed hours fire once: the repeated 02:00 fires at 00:00 UTC only, then 04:00
        // CET follows three real hours later.
        let every_two_hours = schedule("0 */2 * * *", "Europe/Berlin");
        let fires = fires_between(
            &every_two_hours,
            utc("2026-10-24T21:00:00Z"),
            utc("2026-10-25T04:00:00Z"),
        );
        let expected = instants(&[
            "2026-10-24T22:00:00Z",
            "2026-10-25T00:00:00Z",
            "2026-10-25T03:00:00Z",
        ]);
        assert_eq!(fires, expected);
    }

    #[test]
    fn skipped_day_still_fires() {
        // Pacific/Apia skipped 2011-12-30: 2011-12-29 23:59:59 (UTC-10) was followed by
        // 2011-12-31 00:00 (UTC+14), at 10:00 UTC.
        let daily = schedule("30 2 * * *", "Pacific/Apia");
        let fires = fires_between(
            &daily,
            utc("2011-12-28T00:00:00Z"),
            utc("2011-12-31T00:00:00Z"),
        );
        let expected = instants(&[
            "2011-12-28T12:30:00Z",
            "2011-12-29T12:30:00Z",
            "2011-12-30T10:00:00Z",
            "2011-12-30T12:30:00Z",
        ]);
        assert_eq!(fires, expected);
    }

    // Daylight saving time with schedules that follow real time.

    #[test]
    fn hourly_counts_across_transitions() {
        // Each window is one local calendar day: (midnight - 1 s, next midnight - 1 s].
        let cases = [
            (
                "Europe/Berlin",
                "2026-03-28T22:59:59Z",
                "2026-03-29T21:59:59Z",
                23,
                92,
            ),
            (
                "Europe/Berlin",
                "2026-10-24T21:59:59Z",
                "2026-10-25T22:59:59Z",
                25,
                100,
            ),
            (
                "Europe/Berlin",
                "2026-03-27T22:59:59Z",
                "2026-03-28T22:59:59Z",
                24,
                96,
            ),
            (
                "America/New_York",
                "2026-03-08T04:59:59Z",
                "2026-03-09T03:59:59Z",
                23,
                92,
            ),
            (
                "America/New_York",
                "2026-11-01T03:59:59Z",
                "2026-11-02T04:59:59Z",
                25,
                100,
            ),
        ];
        for (zone, since, until, hourly_count, quarter_hour_count) in cases {
            let hourly = schedule("0 * * * *", zone);
            let quarter_hourly = schedule("*/15 * * * *", zone);
            assert!(hourly.follows_real_time());
            assert_eq!(
                hourly.count_between(utc(since), utc(until), 1000),
                hourly_count,
                "{zone} {since}"
            );
            assert_eq!(
                quarter_hourly.count_between(utc(since), utc(until), 1000),
                quarter_hour_count,
                "{zone} {since}"
            );
        }
    }

    #[test]
    fn hourly_fires_every_real_hour() {
        let windows = [
            (
                "Europe/Berlin",
                "2026-03-28T20:00:00Z",
                "2026-03-29T04:00:00Z",
            ),
            (
                "Europe/Berlin",
                "2026-10-24T20:00:00Z",
                "2026-10-25T04:00:00Z",
            ),
            (
                "America/New_York",
                "2026-03-08T03:00:00Z",
                "2026-03-08T11:00:00Z",
            ),
            (
                "America/New_York",
                "2026-11-01T02:00:00Z",
                "2026-11-01T10:00:00Z",
            ),
        ];
        for (zone, since, until) in windows {
            for (expression, minute) in [("0 * * * *", 0), ("30 * * * *", 30)] {
                let hourly = schedule(expression, zone);
                let fires = fires_between(&hourly, utc(since), utc(until));
                assert_eq!(fires.len(), 8, "{expression} {zone} {since}");
                for pair in fires.windows(2) {
                    assert_eq!(
                        pair[1] - pair[0],
                        TimeDelta::hours(1),
                        "{expression} {zone} {pair:?}"
                    );
                }
                assert!(
                    fires.iter().all(|fire| fire.minute() == minute),
                    "{expression} {zone}"
                );
            }
        }
    }

    #[test]
    fn hourly_fires_twice_in_repeated_hour() {
        // In New York 01:00 occurs at 05:00 UTC (EDT) and at 06:00 UTC (EST).
        let hourly = schedule("0 * * * *", "America/New_York");
        let fires = fires_between(
            &hourly,
            utc("2026-11-01T03:30:00Z"),
            utc("2026-11-01T07:30:00Z"),
        );
        let expected = instants(&[
            "2026-11-01T04:00:00Z",
            "2026-11-01T05:00:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T07:00:00Z",
        ]);
        assert_eq!(fires, expected);
    }

    #[test]
    fn follows_real_time_needs_every_hour() {
        assert!(schedule("@hourly", "").follows_real_time());
        assert!(schedule("*/15 0-23 * * *", "").follows_real_time());
        assert!(schedule("0 */1 * * *", "").follows_real_time());
        assert!(!schedule("0 0-22 * * *", "").follows_real_time());
        assert!(!schedule("@daily", "").follows_real_time());
    }

    // Catch-up queries.

    #[test]
    fn latest_between_collapses_missed_week() {
        let daily = schedule("30 2 * * *", "Europe/Berlin");
        let last_run = utc("2026-03-20T01:30:00Z");
        let now = utc("2026-03-27T12:00:00Z");
        assert_eq!(
            daily.latest_between(last_run, now),
            Some(utc("2026-03-27T01:30:00Z"))
        );
        assert_eq!(daily.count_between(last_run, now, 1000), 7);

        // `at` is inclusive and `since` exclusive.
        let fire = utc("2026-03-27T01:30:00Z");
        assert_eq!(daily.latest_between(last_run, fire), Some(fire));
        assert_eq!(daily.latest_between(fire, now), None);
        assert_eq!(daily.latest_between(now, now), None);
        assert_eq!(daily.latest_between(now, last_run), None);

        // Across the spring-forward night the latest window is the shifted one.
        let across_jump = daily.latest_between(now, utc("2026-03-29T12:00:00Z"));
        assert_eq!(across_jump, Some(utc("2026-03-29T01:00:00Z")));
    }

    #[test]
    fn count_between_caps_and_bounds() {
        let every_minute = schedule("* * * * *", "UTC");
        let since = utc("2026-05-01T00:00:00Z");
        let day_later = utc("2026-05-02T00:00:00Z");
        assert_eq!(every_minute.count_between(since, day_later, 10_000), 1440);
        assert_eq!(every_minute.count_between(since, day_later, 100), 100);
        assert_eq!(every_minute.count_between(since, day_later, 0), 0);
        assert_eq!(every_minute.count_between(day_later, since, 100), 0);
        assert_eq!(every_minute.count_between(since, since, 100), 0);

        // The four quarter hours lost in March come back in October.
        let quarter_hourly = schedule("*/15 * * * *", "Europe/Berlin");
        let year = quarter_hourly.count_between(
            utc("2025-12-31T22:59:59Z"),
            utc("2026-12-31T22:59:59Z"),
            usize::MAX,
        );
        assert_eq!(year, 365 * 96);

        let huge =
            every_minute.count_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, 50);
        assert_eq!(huge, 50);
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        for zone in ["UTC", "Pacific/Kiritimati", "Etc/GMT+12", "Europe/Berlin"] {
            for expression in ["0 0 * * *", "0 0 29 2 *", "* * * * *", "0 * 31 12 *"] {
                let parsed = schedule(expression, zone);
                assert_eq!(
                    parsed.next_after(DateTime::<Utc>::MAX_UTC),
                    None,
                    "{expression} {zone}"
                );
                assert!(
                    parsed.next_after(DateTime::<Utc>::MIN_UTC).is_some(),
                    "{expression} {zone}"
                );
                let latest =
                    parsed.latest_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
                assert!(latest.is_some(), "{expression} {zone}");
                let count =
                    parsed.count_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, 3);
                assert_eq!(count, 3, "{expression} {zone}");
            }
        }
    }

    // Comparison with a minute-by-minute reference.

    fn matches_wall(schedule: &Schedule, wall: NaiveDateTime) -> bool {
        has_bit(schedule.minutes, wall.minute())
            && has_bit(schedule.hours, wall.hour())
            && schedule.matches_date(wall.date())
    }

    /// Fire times in (`start`, `end`] that follow from the rules of the module
    /// documentation, found by stepping through every UTC minute. `start` must lie at
    /// least a day before any clock change in the window.
    fn reference_fires(
        schedule: &Schedule,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let wall_at =
            |instant: DateTime<Utc>| instant.with_timezone(&schedule.time_zone).naive_local();
        let minute = TimeDelta::minutes(1);
        let mut fires = Vec::new();
        let mut latest_reading = wall_at(start);
        let mut instant = start + minute;
        while instant <= end {
            let wall = wall_at(instant);
            let fires_now = if schedule.follows_real_time() {
                matches_wall(schedule, wall)
            } else {
                // A fixed time fires when the clock first reads it or a later time, so a
                // fire happens whenever a matching time lies in (latest reading, wall].
                let mut candidate = latest_reading + minute;
                let mut found = false;
                while candidate <= wall && !found {
                    found = matches_wall(schedule, candidate);
                    candidate += minute;
                }
                found
            };
            if fires_now {
                fires.push(instant);
            }
            latest_reading = latest_reading.max(wall);
            instant += minute;
        }
        fires
    }

    #[test]
    fn matches_reference_around_transitions() {
        let windows = [
            (
                "Europe/Berlin",
                "2026-03-28T00:00:00Z",
                "2026-03-30T00:00:00Z",
            ),
            (
                "Europe/Berlin",
                "2026-10-24T00:00:00Z",
                "2026-10-26T00:00:00Z",
            ),
            (
                "America/New_York",
                "2026-03-07T12:00:00Z",
                "2026-03-09T12:00:00Z",
            ),
            (
                "America/New_York",
                "2026-10-31T12:00:00Z",
                "2026-11-02T12:00:00Z",
            ),
            // Half-hour shifts: 02:00 back to 01:30, and 02:00 forward to 02:30.
            (
                "Australia/Lord_Howe",
                "2026-04-04T00:00:00Z",
                "2026-04-06T00:00:00Z",
            ),
            (
                "Australia/Lord_Howe",
                "2026-10-03T00:00:00Z",
                "2026-10-05T00:00:00Z",
            ),
            // Shifts at midnight: 00:00 back to 23:00, and 00:00 forward to 01:00.
            (
                "America/Santiago",
                "2026-04-04T00:00:00Z",
                "2026-04-06T00:00:00Z",
            ),
            (
                "America/Santiago",
                "2026-09-05T00:00:00Z",
                "2026-09-07T00:00:00Z",
            ),
            // A whole skipped day.
            (
                "Pacific/Apia",
                "2011-12-28T00:00:00Z",
                "2012-01-01T00:00:00Z",
            ),
        ];
        let expressions = [
            "30 2 * * *",
            "0 2 * * *",
            "45 1 * * *",
            "0,30 0-3 * * *",
            "0 0 * * *",
            "30 23 * * *",
            "0 */2 * * *",
            "*/20 2 * * *",
            "0 0,12 * * *",
            "0 * * * *",
            "*/15 * * * *",
            "30 * * * *",
            "15,45 * * * SUN",
        ];
        for (zone, start, end) in windows {
            let (start, end) = (utc(start), utc(end));
            for expression in expressions {
                let parsed = schedule(expression, zone);
                let expected = reference_fires(&parsed, start, end);
                let context = format!("`{expression}` in {zone} from {start}");
                assert_eq!(fires_between(&parsed, start, end), expected, "{context}");
                assert_eq!(
                    parsed.count_between(start, end, usize::MAX),
                    expected.len(),
                    "{context}"
                );

                let mut probe = start;
                while probe < end {
                    let latest = expected.iter().rev().find(|fire| **fire <= probe).copied();
                    assert_eq!(
                        parsed.latest_between(start, probe),
                        latest,
                        "{context} at {probe}"
                    );
                    let next = expected.iter().find(|fire| **fire > probe).copied();
                    if next.is_some() {
                        assert_eq!(parsed.next_after(probe), next, "{context} after {probe}");
                    }
                    probe += TimeDelta::minutes(37);
                }
            }
        }
    }

    // Errors.

    #[test]
    fn error_value_out_of_range() {
        let cases = [
            ("61 * * * *", "invalid minute field `61`: value 61 is out of range, expected a number 0-59"),
            ("0 24 * * *", "invalid hour field `24`: value 24 is out of range, expected a number 0-23"),
            ("0 0 0 * *", "invalid day-of-month field `0`: value 0 is out of range, expected a number 1-31"),
            (
                "0 0 * 13 *",
                "invalid month field `13`: value 13 is out of range, expected a number 1-12 or a month name JAN-DEC",
            ),
            (
                "0 0 * * 1,8",
                "invalid day-of-week field `1,8`: value 8 is out of range, expected a number 0-7 (0 and 7 are Sunday) or a day name SUN-SAT",
            ),
            (
                "99999999999 * * * *",
                "invalid minute field `99999999999`: value 99999999999 is out of range, expected a number 0-59",
            ),
        ];
        for (expression, message) in cases {
            assert_eq!(parse_error(expression, "").to_string(), message);
        }
        let error = parse_error("0 0 * * 8", "");
        assert!(
            matches!(error, CronError::InvalidField { field: CronField::DayOfWeek, ref text, .. } if text == "8"),
            "{error:?}"
        );
    }

    #[test]
    fn error_invalid_value_or_name() {
        let cases = [
            ("MON * * * *", "invalid minute field `MON`: `MON` is not a valid value, expected a number 0-59"),
            (
                "0 0 * FOO *",
                "invalid month field `FOO`: `FOO` is not a valid value, expected a number 1-12 or a month name JAN-DEC",
            ),
            (
                "0 0 * * MONDAY",
                "invalid day-of-week field `MONDAY`: `MONDAY` is not a valid value, expected a number 0-7 (0 and 7 are Sunday) or a day name SUN-SAT",
            ),
            ("0 0 ? * *", "invalid day-of-month field `?`: `?` is not a valid value, expected a number 1-31"),
            ("0 0 * JAN *-5", "invalid day-of-week field `*-5`: `*` is not a valid value, expected a number 0-7 (0 and 7 are Sunday) or a day name SUN-SAT"),
        ];
        for (expression, message) in cases {
            assert_eq!(parse_error(expression, "").to_string(), message);
        }
    }

    #[test]
    fn error_list_range_and_step() {
        let cases = [
            ("1,,2 * * * *", "invalid minute field `1,,2`: the list contains an empty item"),
            ("5, * * * *", "invalid minute field `5,`: the list contains an empty item"),
            (
                "10-5 * * * *",
                "invalid minute field `10-5`: range `10-5` starts after it ends, so write the smaller value first",
            ),
            ("-5 * * * *", "invalid minute field `-5`: range `-5` is missing a value"),
            ("0 1- * * *", "invalid hour field `1-`: range `1-` is missing a value"),
            ("*/0 * * * *", "invalid minute field `*/0`: the step must be at least 1, found 0"),
            ("*/x * * * *", "invalid minute field `*/x`: step `x` is not a positive whole number"),
            ("*/ * * * *", "invalid minute field `*/`: step `` is not a positive whole number"),
            ("*/-1 * * * *", "invalid minute field `*/-1`: step `-1` is not a positive whole number"),
            (
                "5/15 * * * *",
                "invalid minute field `5/15`: step `5/15` applies to a single value, so write a range such as `5-59/15` or `*/15`",
            ),
        ];
        for (expression, message) in cases {
            assert_eq!(parse_error(expression, "").to_string(), message);
        }
    }

    #[test]
    fn error_field_count() {
        let cases = [
            ("0 0 * *", 4),
            ("0 0 0 * * * *", 7),
            ("0 0 0 * * *", 6),
            ("", 0),
            ("   ", 0),
        ];
        for (expression, found) in cases {
            let message = format!(
                "invalid cron expression `{}`: found {found} fields, expected 5 (minute hour day-of-month month day-of-week) or a macro such as @daily",
                expression.trim()
            );
            assert_eq!(parse_error(expression, "").to_string(), message);
        }
    }

    #[test]
    fn error_macro() {
        assert_eq!(
            parse_error("@reboot", "").to_string(),
            "unknown cron macro `@reboot`: use @hourly, @daily, @midnight, @weekly, @monthly, @quarterly, @yearly or @annually"
        );
        assert_eq!(
            parse_error("@daily 5", "").to_string(),
            "invalid cron expression `@daily 5`: a macro such as @daily must stand alone"
        );
        assert!(matches!(parse_error("@", ""), CronError::UnknownMacro(ref name) if name == "@"));
    }

    #[test]
    fn error_time_zone() {
        let cases = [
            ("Berlin", "unknown time zone `Berlin`: did you mean `Europe/Berlin`?"),
            ("europe/berlin", "unknown time zone `europe/berlin`: did you mean `Europe/Berlin`?"),
            ("new york", "unknown time zone `new york`: did you mean `America/New_York`?"),
            (
                "Mars/Olympus_Mons",
                "unknown time zone `Mars/Olympus_Mons`: use an IANA time zone name such as Europe/Berlin or America/New_York",
            ),
            (
                "+02:00",
                "unknown time zone `+02:00`: use an IANA time zone name such as Europe/Berlin or America/New_York",
            ),
        ];
        for (zone, message) in cases {
            assert_eq!(parse_error("0 0 * * *", zone).to_string(), message);
        }
    }

    // Accessors and formatting.

    #[test]
    fn accessors_and_display() {
        let berlin = schedule("  30 2 * * *  ", " Europe/Berlin ");
        assert_eq!(berlin.expression(), "30 2 * * *");
        assert_eq!(berlin.time_zone(), "Europe/Berlin");
        assert_eq!(berlin.to_string(), "30 2 * * * (Europe/Berlin)");

        let default_zone = schedule("@daily", "");
        assert_eq!(default_zone.time_zone(), DEFAULT_TIME_ZONE);
        assert_eq!(default_zone.to_string(), "@daily (UTC)");

        assert_eq!(schedule("@daily", "UTC"), default_zone);
        assert_ne!(schedule("0 0 * * *", "UTC"), default_zone);
        assert_ne!(schedule("@daily", "Europe/Berlin"), default_zone);
    }
}
