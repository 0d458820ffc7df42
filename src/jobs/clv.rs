//! Job kind `clv`: customer lifetime value.
//!
//! Reads the orders table and writes one row per customer to
//! `clv`: historic value over configurable windows, RFM scores
//! and segments, and the predictions of the BG/NBD model (Fader, Hardie and
//! Lee 2005) for purchases and of the Gamma-Gamma model (Fader and Hardie
//! 2013) for order value, combined into a discounted CLV.
//!
//! Orders count when their status is neither `refunded` nor `cancelled`
//! and they were placed at or before the as-of time. The models see one
//! transaction per customer per day (UTC): orders of one day are merged and
//! their amounts added, as in the paper. Time runs in the model's unit (weeks by
//! default): a customer's frequency is the number of transaction days after
//! the first, recency the time from the first to the last, and age the time
//! from the first to the as-of date.
//!
//! One-time buyers (frequency 0) form their own cohort, `new` or
//! `one_time`: the model gives them a probability alive of 1 by
//! construction, which says nothing, so the column is null for them and so
//! is their churn risk. Their expected purchases and CLV are still given.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use polars::prelude::*;
use polars_arrow::array::Utf8ViewArray;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{Export, JobContext, JobResult, KindSpec, OutputFrame, Role};
use crate::clv::model::{self, BgNbd, GammaGamma};
use crate::delta::WriteMode;
use crate::error::{Error, Result};

pub const SPEC: KindSpec = KindSpec {
    name: "clv",
    description: "historic value, RFM segments and BG/NBD and Gamma-Gamma predictions per customer",
    inputs: &[Role {
        optional: false,
        name: "orders",
        default_table: "orders",
        description: "orders, one row per order",
    }],
    outputs: &[Role {
        optional: false,
        name: "values",
        default_table: "clv",
        description: "one row per customer with a counted order",
    }],
    validate_params,
    run,
};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The unit of time of the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    Days,
    Weeks,
}

impl TimeUnit {
    /// Days per unit.
    pub fn days(self) -> f64 {
        match self {
            TimeUnit::Days => 1.0,
            TimeUnit::Weeks => 7.0,
        }
    }

    /// Units per month in the CLV sum: 30 days, or 4.345 weeks.
    pub fn per_month(self) -> f64 {
        match self {
            TimeUnit::Days => 30.0,
            TimeUnit::Weeks => 4.345,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TimeUnit::Days => "days",
            TimeUnit::Weeks => "weeks",
        }
    }
}

/// A named RFM segment: a SQL boolean expression over the output's columns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub name: String,
    pub rule: String,
}

/// Parameters of the `clv` job kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The end of the calibration period: a date (the whole day counts) or
    /// a timestamp. Orders after it are ignored. Default: the run's start.
    pub as_of: Option<String>,
    /// The models' unit of time.
    pub time_unit: TimeUnit,
    /// The prediction horizon, in `time_unit`s.
    pub horizon: f64,
    /// Discount rate per month for the CLV.
    pub monthly_discount_rate: f64,
    /// Revenue windows, in days before the as-of time; each gives a column
    /// `revenue_<N>d`.
    pub revenue_windows_days: Vec<u32>,
    /// Predictions need at least this many customers with a repeat
    /// purchase and a positive repeat value.
    pub min_repeat_customers: usize,
    /// Predictions need at least this many days between the first order
    /// and the as-of date.
    pub min_history_days: u32,
    /// One-time buyers whose order is younger than this many days are
    /// `new`, older ones `one_time`.
    pub new_customer_days: u32,
    /// Probability alive below which churn risk is `high`.
    pub churn_risk_high_below: f64,
    /// Probability alive at or above which churn risk is `low`.
    pub churn_risk_low_above: f64,
    /// RFM segments, the first matching rule wins.
    pub segments: Vec<Segment>,
    /// The segment of customers no rule matches.
    pub default_segment: String,
    /// Writes the output as CSV to this path under the warehouse root.
    pub export_csv: Option<String>,
}

impl Default for Params {
    fn default() -> Self {
        let segment = |name: &str, rule: &str| Segment {
            name: name.into(),
            rule: rule.into(),
        };
        Self {
            as_of: None,
            time_unit: TimeUnit::Weeks,
            horizon: 52.0,
            monthly_discount_rate: 0.01,
            revenue_windows_days: vec![90, 365],
            min_repeat_customers: 30,
            min_history_days: 90,
            new_customer_days: 90,
            churn_risk_high_below: 0.3,
            churn_risk_low_above: 0.7,
            segments: vec![
                segment(
                    "champions",
                    "r_score >= 4 AND f_score >= 4 AND m_score >= 4",
                ),
                segment("loyal", "r_score >= 3 AND f_score >= 4"),
                segment("new", "r_score >= 4 AND orders = 1"),
                segment("at_risk", "r_score <= 2 AND f_score >= 3"),
                segment("hibernating", "r_score <= 2"),
            ],
            default_segment: "needs_attention".into(),
            export_csv: None,
        }
    }
}

/// The columns a segment rule may use.
const SEGMENT_COLUMNS: [(&str, DataType); 7] = [
    ("r_score", DataType::Int32),
    ("f_score", DataType::Int32),
    ("m_score", DataType::Int32),
    ("orders", DataType::Int64),
    ("revenue_lifetime", DataType::Float64),
    ("recency_days", DataType::Int64),
    ("average_order_value", DataType::Float64),
];

fn segment_columns_frame() -> DataFrame {
    let columns = SEGMENT_COLUMNS
        .iter()
        .map(|(name, dtype)| Column::new_empty((*name).into(), dtype))
        .collect();
    DataFrame::new(0, columns).expect("empty columns of one height")
}

fn validate_params(params: &toml::Table) -> std::result::Result<Value, String> {
    let value = super::parse_params::<Params>(params)?;
    let parsed: Params = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if let Some(as_of) = &parsed.as_of {
        AsOf::parse(as_of)?;
    }
    if !(parsed.horizon.is_finite() && parsed.horizon > 0.0) {
        return Err(format!(
            "horizon must be a positive number of {}, got {}",
            parsed.time_unit.name(),
            parsed.horizon
        ));
    }
    if !(0.0..1.0).contains(&parsed.monthly_discount_rate) {
        return Err(format!(
            "monthly_discount_rate must be at least 0 and below 1 (0.01 is 1% a month), got {}",
            parsed.monthly_discount_rate
        ));
    }
    let (high, low) = (parsed.churn_risk_high_below, parsed.churn_risk_low_above);
    if !(0.0 <= high && high <= low && low <= 1.0) {
        return Err(format!(
            "churn risk thresholds need 0 <= churn_risk_high_below <= churn_risk_low_above <= 1, \
             got {high} and {low}"
        ));
    }
    if parsed.revenue_windows_days.contains(&0) {
        return Err("revenue_windows_days must be positive numbers of days".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for segment in &parsed.segments {
        if segment.name.trim().is_empty() || !names.insert(segment.name.as_str()) {
            return Err(format!(
                "segment names must be unique and not empty; `{}` is not",
                segment.name
            ));
        }
        let _ = check_rule(segment)?;
    }
    if let Some(path) = &parsed.export_csv {
        super::check_relative_path("export_csv", path)?;
    }
    Ok(value)
}

/// Checks that a segment rule parses and names known columns.
fn check_rule(segment: &Segment) -> std::result::Result<Expr, String> {
    let available = SEGMENT_COLUMNS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    let expr = polars::sql::sql_expr(&segment.rule).map_err(|e| {
        format!(
            "segment `{}` has an invalid rule `{}`: {e}",
            segment.name, segment.rule
        )
    })?;
    segment_columns_frame()
        .lazy()
        .filter(expr.clone())
        .collect()
        .map_err(|e| {
            format!(
                "segment `{}` rule `{}` does not apply: {}; the columns are: {available}",
                segment.name,
                segment.rule,
                super::short_error(&e)
            )
        })?;
    Ok(expr)
}

/// The end of the calibration period.
#[derive(Debug, Clone, Copy)]
pub struct AsOf {
    /// Orders before this instant count (microseconds since the epoch).
    pub end_micros: i64,
    /// The day of the as-of time, in days since the epoch.
    pub day: i64,
}

impl AsOf {
    /// Parses a date (the whole day counts) or a timestamp.
    pub fn parse(value: &str) -> std::result::Result<Self, String> {
        if let Ok(date) = NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d") {
            return Ok(Self::end_of_day(date));
        }
        match crate::ingest::convert::parse_timestamp(value.trim()) {
            Some(micros) => Ok(Self::at(micros)),
            None => Err(format!(
                "as_of `{value}` is neither a date nor a timestamp; write 1997-09-30 or \
                 1997-09-30T23:59:59Z"
            )),
        }
    }

    /// Every order of `date` counts.
    pub fn end_of_day(date: NaiveDate) -> Self {
        let day = date
            .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date"))
            .num_days();
        Self {
            end_micros: (day + 1) * MICROS_PER_DAY,
            day,
        }
    }

    /// Orders at or before `micros` count.
    pub fn at(micros: i64) -> Self {
        Self {
            end_micros: micros + 1,
            day: micros.div_euclid(MICROS_PER_DAY),
        }
    }

    fn from_time(time: DateTime<Utc>) -> Self {
        Self::at(time.timestamp_micros())
    }

    fn date(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
            + chrono::Days::new(self.day as u64)
    }
}

/// Orders that count for value: placed before `end_micros`, not refunded or
/// cancelled, with their day number in `day`.
pub fn counted_orders(orders: LazyFrame, end_micros: i64) -> LazyFrame {
    let status = col("status");
    let counts = status.clone().is_null().or(status
        .clone()
        .neq(lit("refunded"))
        .and(status.neq(lit("cancelled"))));
    orders
        .select([
            col("contact_id"),
            col("ordered_at"),
            col("amount"),
            col("status"),
        ])
        .filter(col("ordered_at").cast(DataType::Int64).lt(lit(end_micros)))
        .filter(counts)
        .with_column(
            col("ordered_at")
                .cast(DataType::Int64)
                .floor_div(lit(MICROS_PER_DAY))
                .alias("day"),
        )
}

/// The models' view of customers, in the model's unit of time.
#[derive(Debug, Default, Clone)]
pub struct ModelInputs {
    pub frequency: Vec<f64>,
    pub recency: Vec<f64>,
    pub age: Vec<f64>,
    /// Mean value of the repeat transactions; 0 for one-time buyers.
    pub repeat_value: Vec<f64>,
}

impl ModelInputs {
    /// Builds the inputs from each customer's transaction days.
    fn from_totals(totals: &[CustomerTotals], as_of_day: i64, unit: TimeUnit) -> Self {
        let days = unit.days();
        let money = |units: i64| units as f64 / AMOUNT_UNITS;
        let ((frequency, recency), (age, repeat_value)) = totals
            .par_iter()
            .map(|t| {
                let x = (t.days - 1) as f64;
                let repeat = if t.days > 1 {
                    (money(t.units) - money(t.first_day_units)) / x
                } else {
                    0.0
                };
                (
                    (x, (t.last_day - t.first_day) as f64 / days),
                    ((as_of_day - t.first_day) as f64 / days, repeat),
                )
            })
            .unzip();
        ModelInputs {
            frequency,
            recency,
            age,
            repeat_value,
        }
    }
}

/// Fitted models with the figures the manifest records.
#[derive(Debug, Clone)]
pub struct FittedModels {
    pub bgnbd: model::Fit<BgNbd>,
    pub gamma_gamma: model::Fit<GammaGamma>,
    pub gamma_gamma_customers: usize,
    pub excluded_nonpositive: usize,
}

/// Why predictions were not made, when the data is too thin.
pub fn prediction_gate(inputs: &ModelInputs, params: &Params) -> Option<String> {
    let repeat = inputs
        .frequency
        .iter()
        .zip(&inputs.repeat_value)
        .filter(|(x, m)| **x > 0.0 && **m > 0.0)
        .count();
    if repeat < params.min_repeat_customers {
        return Some(format!(
            "{repeat} customers have a repeat purchase with a positive value; predictions need \
             at least {} (min_repeat_customers)",
            params.min_repeat_customers
        ));
    }
    let history_days = inputs.age.iter().fold(0.0f64, |a, b| a.max(*b)) * params.time_unit.days();
    if history_days < f64::from(params.min_history_days) {
        return Some(format!(
            "the orders span {history_days:.0} days before the as-of date; predictions need at \
             least {} days (min_history_days)",
            params.min_history_days
        ));
    }
    None
}

/// Fits BG/NBD on every customer and Gamma-Gamma on the repeat buyers with
/// a positive repeat value.
pub fn fit_models(inputs: &ModelInputs) -> Result<FittedModels> {
    let bgnbd = model::fit_bgnbd(&inputs.frequency, &inputs.recency, &inputs.age)
        .map_err(|e| Error::Data(format!("the BG/NBD fit failed: {e}")))?;
    let mut frequency = Vec::new();
    let mut value = Vec::new();
    let mut excluded_nonpositive = 0;
    for (x, m) in inputs.frequency.iter().zip(&inputs.repeat_value) {
        if *x > 0.0 {
            if *m > 0.0 {
                frequency.push(*x);
                value.push(*m);
            } else {
                excluded_nonpositive += 1;
            }
        }
    }
    let gamma_gamma = model::fit_gamma_gamma(&frequency, &value)
        .map_err(|e| Error::Data(format!("the Gamma-Gamma fit failed: {e}")))?;
    Ok(FittedModels {
        bgnbd,
        gamma_gamma,
        gamma_gamma_customers: frequency.len(),
        excluded_nonpositive,
    })
}

/// Per-customer predictions.
#[derive(Debug, Default)]
struct Predictions {
    probability_alive: Vec<Option<f64>>,
    expected_purchases: Vec<f64>,
    expected_order_value: Vec<f64>,
    clv: Vec<f64>,
}

/// Computes the forecast of a customer known to be alive, which depends on
/// x and T only. It returns the expected purchases over the horizon of
/// `params`, and the same purchases split into monthly steps of
/// `time_unit.per_month()` units (the last step ends at the horizon), each
/// discounted by `(1 + monthly_discount_rate)^months`, then added up.
/// Expected purchases are the first value times the probability alive.
/// The CLV is the second value times the probability alive and the
/// expected order value.
fn alive_forecast(model: &BgNbd, x: f64, t: f64, params: &Params) -> (f64, f64) {
    let (horizon, monthly_discount_rate) = (params.horizon, params.monthly_discount_rate);
    let step = params.time_unit.per_month();
    let mut discounted = 0.0;
    let mut previous_time = 0.0;
    let mut previous = 0.0;
    let mut month = 1.0f64;
    while previous_time < horizon {
        let time = (month * step).min(horizon);
        let expected = model.alive_expected_purchases(time, x, t);
        let discount = (1.0 + monthly_discount_rate).powf(time / step);
        discounted += (expected - previous) / discount;
        previous = expected;
        previous_time = time;
        month += 1.0;
    }
    (model.alive_expected_purchases(horizon, x, t), discounted)
}

/// Prediction columns: (probability alive, expected purchases) and
/// (expected order value, CLV).
type PredictionColumns = ((Vec<Option<f64>>, Vec<f64>), (Vec<f64>, Vec<f64>));

fn predict(inputs: &ModelInputs, models: &FittedModels, params: &Params) -> Result<Predictions> {
    let bg = models.bgnbd.params;
    let gg = models.gamma_gamma.params;
    // Frequencies are whole numbers and ages whole days in the model's unit,
    // so a few thousand (x, T) pairs cover millions of customers: each
    // pair's forecast, with its hypergeometric functions, is computed once.
    let mut pairs: PlHashMap<(u64, u64), u32> = PlHashMap::default();
    let mut keys: Vec<(f64, f64)> = Vec::new();
    let slots: Vec<u32> = inputs
        .frequency
        .iter()
        .zip(&inputs.age)
        .map(|(&x, &t)| {
            *pairs.entry((x.to_bits(), t.to_bits())).or_insert_with(|| {
                keys.push((x, t));
                (keys.len() - 1) as u32
            })
        })
        .collect();
    let forecasts: Vec<(f64, f64)> = keys
        .par_iter()
        .map(|&(x, t)| alive_forecast(&bg, x, t, params))
        .collect();
    let ((probability_alive, expected_purchases), (expected_order_value, clv)): PredictionColumns =
        (0..inputs.frequency.len())
            .into_par_iter()
            .map(|i| {
                let (x, t_x, t) = (inputs.frequency[i], inputs.recency[i], inputs.age[i]);
                let (horizon_purchases, discounted_purchases) = forecasts[slots[i] as usize];
                let alive = bg.probability_alive(x, t_x, t);
                let m = inputs.repeat_value[i];
                let value = if x > 0.0 && m > 0.0 {
                    gg.conditional_expected_value(x, m)
                } else {
                    gg.conditional_expected_value(0.0, 0.0)
                };
                (
                    ((x > 0.0).then_some(alive), alive * horizon_purchases),
                    (value, value * alive * discounted_purchases),
                )
            })
            .unzip();
    let not_finite = (0..clv.len()).into_par_iter().find_first(|&i| {
        !(probability_alive[i].is_none_or(f64::is_finite)
            && expected_purchases[i].is_finite()
            && expected_order_value[i].is_finite()
            && clv[i].is_finite())
    });
    if let Some(i) = not_finite {
        return Err(Error::Data(format!(
            "the models gave a non-finite prediction for a customer with frequency {}, \
             recency {:.2} and age {:.2}; no prediction is written",
            inputs.frequency[i], inputs.recency[i], inputs.age[i]
        )));
    }
    Ok(Predictions {
        probability_alive,
        expected_purchases,
        expected_order_value,
        clv,
    })
}

/// Quintile scores 1 to 5: a value's score is 1 + 5 * (the share of values
/// below it), rounded down, so equal values share a score and higher
/// values never score lower.
pub fn quintile_scores(values: &[f64]) -> Vec<i32> {
    let n = values.len();
    // Values travel with their rows, so the sort compares neighbours in
    // memory rather than looking values up.
    let mut order: Vec<(f64, u32)> = values
        .iter()
        .enumerate()
        .map(|(row, value)| (*value, row as u32))
        .collect();
    order.par_sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut scores = vec![0i32; n];
    let mut below = 0usize;
    for (position, &(value, row)) in order.iter().enumerate() {
        if position > 0 && order[position - 1].0 < value {
            below = position;
        }
        scores[row as usize] = 1 + ((5 * below) / n.max(1)) as i32;
    }
    scores
}

fn column_i64(frame: &DataFrame, name: &str) -> Result<Vec<Option<i64>>> {
    Ok(frame
        .column(name)?
        .cast(&DataType::Int64)?
        .i64()?
        .iter()
        .collect())
}

/// Amounts are added up in millionths of the currency unit, as whole
/// numbers: the sums are exact and the same in every run, whatever the
/// order in which the orders are added.
const AMOUNT_UNITS: f64 = 1e6;

/// One customer's sums over its counted orders.
#[derive(Debug, Default, Clone, Copy)]
struct CustomerTotals {
    /// Row of the customer's first order in the sorted order, for its id.
    row: u32,
    first_micros: i64,
    last_micros: i64,
    orders: i64,
    units: i64,
    first_day: i64,
    last_day: i64,
    days: i64,
    first_day_units: i64,
}

impl CustomerTotals {
    /// Sums one customer's orders, sorted by day.
    fn of(orders: &[OrderKey]) -> Self {
        let first = &orders[0];
        let mut totals = CustomerTotals {
            row: first.row,
            first_micros: i64::MAX,
            last_micros: i64::MIN,
            first_day: i64::from(first.day),
            last_day: i64::from(orders[orders.len() - 1].day),
            days: 1,
            ..Default::default()
        };
        for (i, order) in orders.iter().enumerate() {
            totals.first_micros = totals.first_micros.min(order.micros);
            totals.last_micros = totals.last_micros.max(order.micros);
            totals.units += order.units;
            if order.day == first.day {
                totals.first_day_units += order.units;
            }
            if i > 0 && orders[i - 1].day != order.day {
                totals.days += 1;
            }
        }
        totals.orders = orders.len() as i64;
        totals
    }
}

/// A counted order in the sort that brings each customer's orders
/// together: the hash of its contact_id, its day and its row, with its time
/// and amount (in millionths) carried along.
#[derive(Debug, Clone, Copy)]
struct OrderKey {
    hash: u64,
    day: i32,
    row: u32,
    micros: i64,
    units: i64,
}

/// Tells whether rows `a` and `b` of `ids` contain the same id. An id of up
/// to 12 bytes lies within its 16-byte view, after the length, so two such
/// views are compared as numbers over the length and the id's bytes.
fn same_id(ids: &Utf8ViewArray, a: usize, b: usize) -> bool {
    let (view_a, view_b) = (ids.views()[a], ids.views()[b]);
    if view_a.length != view_b.length {
        return false;
    }
    if view_a.is_inline() {
        let bits = 8 * (4 + view_a.length);
        let mask = if bits >= 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        (view_a.as_u128() ^ view_b.as_u128()) & mask == 0
    } else {
        view_a.prefix == view_b.prefix && ids.value(a) == ids.value(b)
    }
}

/// Returns the ranges of `keys` (sorted by hash) that contain one customer
/// each. Two ids with the same hash are first sorted apart by id.
fn customer_runs(keys: &mut [OrderKey], ids: &Utf8ViewArray) -> Vec<(usize, usize)> {
    // Pieces that end where the hash changes are split up in parallel.
    let pieces = rayon::current_num_threads() * 8;
    let size = (keys.len() / pieces).max(1);
    let mut slices = Vec::with_capacity(pieces + 1);
    let mut rest = keys;
    let mut offset = 0;
    while !rest.is_empty() {
        let mut end = size.min(rest.len());
        while end < rest.len() && rest[end].hash == rest[end - 1].hash {
            end += 1;
        }
        let (piece, tail) = rest.split_at_mut(end);
        slices.push((offset, piece));
        offset += end;
        rest = tail;
    }
    slices
        .into_par_iter()
        .flat_map_iter(|(offset, piece)| {
            let mut runs = Vec::new();
            let mut start = 0;
            while start < piece.len() {
                let hash = piece[start].hash;
                let mut end = start + 1;
                while end < piece.len() && piece[end].hash == hash {
                    end += 1;
                }
                let run = &mut piece[start..end];
                let first = run[0].row as usize;
                if run[1..]
                    .iter()
                    .all(|key| same_id(ids, first, key.row as usize))
                {
                    runs.push((offset + start, offset + end));
                } else {
                    run.sort_unstable_by_key(|key| (ids.value(key.row as usize), key.day, key.row));
                    let mut from = 0;
                    for at in 1..=run.len() {
                        if at == run.len()
                            || !same_id(ids, run[at].row as usize, run[from].row as usize)
                        {
                            runs.push((offset + start + from, offset + start + at));
                            from = at;
                        }
                    }
                }
                start = end;
            }
            runs
        })
        .collect()
}

/// A column of the per-customer frame, built from the totals of each
/// customer (or, for a revenue window, from the customer's orders since a
/// time in microseconds).
enum ColumnSpec<'a> {
    Int(&'static str, fn(&CustomerTotals) -> i64),
    Time(&'static str, fn(&CustomerTotals) -> i64),
    Money(&'static str, fn(&CustomerTotals) -> i64),
    Window(&'a String, i64),
}

/// Computes the historic value per customer, one row per customer with a
/// counted order, and the models' inputs for the same customers in the
/// same order.
///
/// The orders are sorted by a fixed hash of contact_id and by day, so each
/// customer's orders lie together and in order, and summed in one pass.
/// Amounts are added in whole millionths. The frame is therefore the same,
/// rows and order, for the same orders, however they are stored.
fn customer_frame(
    orders: LazyFrame,
    as_of: AsOf,
    params: &Params,
) -> Result<(DataFrame, ModelInputs)> {
    let counted = counted_orders(orders, as_of.end_micros).select([
        col("contact_id"),
        col("ordered_at"),
        col("amount"),
    ]);
    let counted = super::collect_streaming(counted)?;
    let height = counted.height();
    if u32::try_from(height).is_err() {
        return Err(Error::Data(format!(
            "{height} counted orders are more than the clv job handles in one run ({})",
            u32::MAX
        )));
    }
    let timestamp_type = counted.column("ordered_at")?.dtype().clone();
    let ids = counted.column("contact_id")?.str()?.rechunk();
    let micros = counted.column("ordered_at")?.cast(&DataType::Int64)?;
    let micros = micros.i64()?.rechunk();
    let amounts = counted.column("amount")?.cast(&DataType::Float64)?;
    let amounts = amounts.f64()?.rechunk();
    let missing = ids.null_count() + micros.null_count() + amounts.null_count();
    if missing > 0 {
        return Err(Error::Data(format!(
            "{missing} counted orders lack a contact_id, ordered_at or amount; \
             ingest them again through `nightshift ingest orders`, which rejects such rows"
        )));
    }
    // One chunk without nulls after the rechunks and the check above.
    let micros = micros.cont_slice()?;
    let amounts = amounts.cont_slice()?;
    let ids = ids.downcast_as_array();

    let mut keys: Vec<OrderKey> = (0..height)
        .into_par_iter()
        .map(|row| {
            let day = micros[row].div_euclid(MICROS_PER_DAY);
            OrderKey {
                hash: crate::hash::hash_bytes(ids.value(row).as_bytes()),
                day: i32::try_from(day).unwrap_or(if day < 0 { i32::MIN } else { i32::MAX }),
                row: row as u32,
                micros: micros[row],
                units: (amounts[row] * AMOUNT_UNITS).round() as i64,
            }
        })
        .collect();
    keys.par_sort_unstable_by_key(|key| (key.hash, key.day, key.row));

    let runs = customer_runs(&mut keys, ids);
    let totals: Vec<CustomerTotals> = runs
        .par_iter()
        .map(|&(start, end)| CustomerTotals::of(&keys[start..end]))
        .collect();

    // The columns are built in parallel: each is a pass over the totals
    // into fresh memory, and one after another they took about a fifth
    // of the aggregation at 1M customers.
    let n = totals.len();
    let windows: Vec<(String, i64)> = params
        .revenue_windows_days
        .iter()
        .map(|days| {
            let since = as_of.end_micros - i64::from(*days) * MICROS_PER_DAY;
            (format!("revenue_{days}d"), since)
        })
        .collect();
    let mut specs: Vec<ColumnSpec> = vec![
        ColumnSpec::Time("first_order_at", |t| t.first_micros),
        ColumnSpec::Time("last_order_at", |t| t.last_micros),
        ColumnSpec::Int("orders", |t| t.orders),
        ColumnSpec::Money("revenue_lifetime", |t| t.units),
    ];
    specs.extend(
        windows
            .iter()
            .map(|(name, since)| ColumnSpec::Window(name, *since)),
    );
    let money = |units: i64| units as f64 / AMOUNT_UNITS;
    let (ids, (built, inputs)) = rayon::join(
        || {
            counted.column("contact_id")?.take(&IdxCa::from_vec(
                "".into(),
                totals.iter().map(|t| t.row as IdxSize).collect(),
            ))
        },
        || {
            rayon::join(
                || {
                    specs
                        .par_iter()
                        .map(|spec| -> Result<Column> {
                            Ok(match spec {
                                ColumnSpec::Int(name, value) => Column::new(
                                    (*name).into(),
                                    totals.iter().map(value).collect::<Vec<_>>(),
                                ),
                                ColumnSpec::Time(name, value) => Column::new(
                                    (*name).into(),
                                    totals.iter().map(value).collect::<Vec<_>>(),
                                )
                                .cast(&timestamp_type)?,
                                ColumnSpec::Money(name, value) => Column::new(
                                    (*name).into(),
                                    totals.iter().map(|t| money(value(t))).collect::<Vec<_>>(),
                                ),
                                ColumnSpec::Window(name, since) => Column::new(
                                    name.as_str().into(),
                                    runs.iter()
                                        .map(|&(start, end)| {
                                            money(
                                                keys[start..end]
                                                    .iter()
                                                    .filter(|key| key.micros >= *since)
                                                    .map(|key| key.units)
                                                    .sum(),
                                            )
                                        })
                                        .collect::<Vec<_>>(),
                                ),
                            })
                        })
                        .collect::<Result<Vec<Column>>>()
                },
                || ModelInputs::from_totals(&totals, as_of.day, params.time_unit),
            )
        },
    );
    let mut columns = vec![ids?];
    columns.extend(built?);
    Ok((DataFrame::new(n, columns)?, inputs))
}

fn run(ctx: &JobContext) -> Result<JobResult> {
    let params: Params = serde_json::from_value(ctx.params.clone())?;
    let as_of = match &params.as_of {
        Some(value) => AsOf::parse(value).map_err(Error::Config)?,
        None => AsOf::from_time(ctx.started_at),
    };
    let input = ctx.input("orders");
    let orders = input.table.scan(&input.snapshot)?;
    let mut timer = PhaseTimer::default();
    let (frame, inputs) = customer_frame(orders, as_of, &params)?;
    timer.lap("aggregate");
    let mut result = JobResult::default();
    let metrics = &mut result.metrics;
    metrics.insert("as_of".into(), Value::from(as_of.date().to_string()));
    metrics.insert("time_unit".into(), Value::from(params.time_unit.name()));
    metrics.insert("horizon".into(), Value::from(params.horizon));
    metrics.insert("customers".into(), Value::from(frame.height()));

    let repeat = inputs.frequency.iter().filter(|x| **x > 0.0).count();
    metrics.insert("repeat_customers".into(), Value::from(repeat));
    metrics.insert(
        "one_time_customers".into(),
        Value::from(inputs.frequency.len() - repeat),
    );

    let predictions = match prediction_gate(&inputs, &params) {
        Some(reason) => {
            tracing::warn!(pipeline = %ctx.pipeline, "predictions skipped: {reason}");
            metrics.insert("predictions".into(), Value::from("skipped"));
            metrics.insert("predictions_skipped_reason".into(), Value::from(reason));
            None
        }
        None => {
            let models = fit_models(&inputs)?;
            timer.lap("fit");
            let predictions = predict(&inputs, &models, &params)?;
            timer.lap("predict");
            metrics.insert("predictions".into(), Value::from("made"));
            metrics.insert(
                "bgnbd".into(),
                bgnbd_json(&models.bgnbd, inputs.frequency.len()),
            );
            let gg = &models.gamma_gamma;
            metrics.insert(
                "gamma_gamma".into(),
                json!({
                    "p": gg.params.p,
                    "q": gg.params.q,
                    "v": gg.params.v,
                    "log_likelihood": gg.log_likelihood,
                    "iterations": gg.iterations,
                    "customers": models.gamma_gamma_customers,
                    "excluded_nonpositive_value": models.excluded_nonpositive,
                }),
            );
            metrics.insert(
                "total_clv".into(),
                Value::from(predictions.clv.iter().sum::<f64>()),
            );
            Some(predictions)
        }
    };
    let output = build_output(&frame, &inputs, predictions, as_of, &params, ctx)?;
    timer.lap("rfm_and_output");
    metrics.insert("segments".into(), output.segments);
    metrics.insert("cohorts".into(), output.cohorts);
    let values = output.frame;
    metrics.insert("seconds".into(), timer.into_json());

    if let Some(path) = &params.export_csv {
        result.exports.push(Export {
            path: path.clone(),
            frame: values.clone(),
        });
    }
    result.outputs.push(OutputFrame {
        role: "values".into(),
        frame: values,
        mode: WriteMode::Overwrite,
        key: Some("contact_id".into()),
    });
    Ok(result)
}

fn bgnbd_json(fit: &model::Fit<BgNbd>, customers: usize) -> Value {
    json!({
        "r": fit.params.r,
        "alpha": fit.params.alpha,
        "a": fit.params.a,
        "b": fit.params.b,
        "log_likelihood": fit.log_likelihood,
        "iterations": fit.iterations,
        "customers": customers,
    })
}

/// Returns the values of a column built without nulls in one chunk, such
/// as the integer and time columns of [`customer_frame`].
fn values_i64<'a>(frame: &'a DataFrame, name: &str) -> Result<&'a [i64]> {
    let column = frame.column(name)?;
    let values = match column.dtype() {
        DataType::Datetime(_, _) => column.datetime()?.physical(),
        _ => column.i64()?,
    };
    Ok(values.cont_slice()?)
}

/// Returns the values of a float column built without nulls in one chunk.
fn values_f64<'a>(frame: &'a DataFrame, name: &str) -> Result<&'a [f64]> {
    Ok(frame.column(name)?.f64()?.cont_slice()?)
}

/// The output frame with the customers counted by segment and by cohort
/// (names with no customer left out).
struct Output {
    frame: DataFrame,
    segments: Value,
    cohorts: Value,
}

/// Counts the rows of each name, given each row's index into `names`, in
/// the order of the names.
fn count_names(names: &[&str], indices: &[u32]) -> Value {
    let mut counts = vec![0u64; names.len()];
    for index in indices {
        counts[*index as usize] += 1;
    }
    // The default segment may share its name with a rule.
    let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, count) in names.iter().zip(counts).filter(|(_, count)| *count > 0) {
        *by_name.entry(name).or_default() += count;
    }
    Value::Object(
        by_name
            .into_iter()
            .map(|(name, count)| (name.to_string(), Value::from(count)))
            .collect(),
    )
}

/// Builds the column of each row's name, given its index into `names`.
fn names_column(name: &str, names: &[&str], indices: &[u32]) -> Column {
    let values: Vec<&str> = indices
        .par_iter()
        .map(|index| names[*index as usize])
        .collect();
    Column::new(name.into(), values)
}

/// Builds the output frame: the historic values of `frame`, RFM scores and
/// segments, the model inputs and the predictions, row for row. Every
/// row of `frame` has a counted order, so `inputs` and `predictions` have
/// one entry per row.
fn build_output(
    frame: &DataFrame,
    inputs: &ModelInputs,
    predictions: Option<Predictions>,
    as_of: AsOf,
    params: &Params,
    ctx: &JobContext,
) -> Result<Output> {
    let height = frame.height();
    let orders = values_i64(frame, "orders")?;
    let revenue = values_f64(frame, "revenue_lifetime")?;
    let first_at = values_i64(frame, "first_order_at")?;
    let last_at = values_i64(frame, "last_order_at")?;
    let recency_days: Vec<i64> = last_at
        .par_iter()
        .map(|micros| as_of.day - micros.div_euclid(MICROS_PER_DAY))
        .collect();

    // Each score sorts every customer, so the three sorts run in parallel.
    let (recency_score, (frequency_score, monetary_score)) = rayon::join(
        || {
            quintile_scores(
                &recency_days
                    .iter()
                    .map(|d| -(*d as f64))
                    .collect::<Vec<_>>(),
            )
        },
        || {
            rayon::join(
                || quintile_scores(&orders.iter().map(|o| *o as f64).collect::<Vec<_>>()),
                || quintile_scores(revenue),
            )
        },
    );

    // Indices into `COHORTS`. A one-time buyer's first order is its only
    // transaction day, so its day is that of first_order_at.
    const COHORTS: [&str; 3] = ["repeat", "new", "one_time"];
    let new_days = i64::from(params.new_customer_days);
    let cohort: Vec<u32> = inputs
        .frequency
        .par_iter()
        .zip(first_at)
        .map(|(x, first)| {
            if *x > 0.0 {
                0
            } else if as_of.day - first.div_euclid(MICROS_PER_DAY) < new_days {
                1
            } else {
                2
            }
        })
        .collect();

    let predicted = |name: &str, values: Option<&[f64]>| match values {
        Some(values) => Column::new(name.into(), values),
        None => Column::full_null(name.into(), height, &DataType::Float64),
    };
    let alive = predictions.as_ref().map(|p| &p.probability_alive);
    let churn: Vec<Option<&str>> = match alive {
        Some(alive) => alive
            .par_iter()
            .map(|p| {
                p.map(|p| {
                    if p < params.churn_risk_high_below {
                        "high"
                    } else if p >= params.churn_risk_low_above {
                        "low"
                    } else {
                        "medium"
                    }
                })
            })
            .collect(),
        None => vec![None; height],
    };
    let average_order_value: Vec<f64> = revenue
        .par_iter()
        .zip(orders)
        .map(|(r, o)| r / *o as f64)
        .collect();
    let between: Vec<Option<f64>> = (0..height)
        .into_par_iter()
        .map(|i| {
            (orders[i] > 1).then(|| {
                (last_at[i] - first_at[i]) as f64 / MICROS_PER_DAY as f64 / (orders[i] - 1) as f64
            })
        })
        .collect();
    let recency_days = Column::new("recency_days".into(), recency_days);
    let r_score = Column::new("r_score".into(), recency_score);
    let f_score = Column::new("f_score".into(), frequency_score);
    let m_score = Column::new("m_score".into(), monetary_score);
    let average_order_value = Column::new("average_order_value".into(), average_order_value);

    // Segments: the first matching rule, in the order of the pipeline
    // file. The rules are evaluated together over the columns they may use.
    let mut segment_names: Vec<&str> = params.segments.iter().map(|s| s.name.as_str()).collect();
    segment_names.push(&params.default_segment);
    let rules = params
        .segments
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let expr = check_rule(rule).map_err(Error::Config)?;
            Ok(expr.fill_null(lit(false)).alias(format!("rule_{i}")))
        })
        .collect::<Result<Vec<Expr>>>()?;
    let rule_input = DataFrame::new(
        height,
        vec![
            r_score.clone(),
            f_score.clone(),
            m_score.clone(),
            frame.column("orders")?.clone(),
            frame.column("revenue_lifetime")?.clone(),
            recency_days.clone(),
            average_order_value.clone(),
        ],
    )?;
    let matched = if rules.is_empty() {
        Vec::new()
    } else {
        // with_columns, unlike select, gives a rule that is a constant
        // (`TRUE`) one value per row.
        let names: Vec<String> = (0..rules.len()).map(|i| format!("rule_{i}")).collect();
        let masks = rule_input.lazy().with_columns(rules).collect()?;
        masks
            .select(names)?
            .columns()
            .iter()
            .map(|mask| -> Result<BooleanChunked> {
                let mask = mask.cast(&DataType::Boolean)?;
                Ok(mask
                    .bool()?
                    .fill_null_with_values(false)?
                    .rechunk()
                    .into_owned())
            })
            .collect::<Result<Vec<_>>>()?
    };
    let matched: Vec<_> = matched
        .iter()
        .map(|mask| mask.downcast_as_array())
        .collect();
    let segment: Vec<u32> = (0..height)
        .into_par_iter()
        .map(|row| {
            matched
                .iter()
                .position(|mask| mask.value(row))
                .unwrap_or(matched.len()) as u32
        })
        .collect();

    let mut columns: Vec<Column> = vec![
        frame.column("contact_id")?.clone(),
        frame.column("first_order_at")?.clone(),
        frame.column("last_order_at")?.clone(),
        frame.column("orders")?.clone(),
        frame.column("revenue_lifetime")?.clone(),
    ];
    for days in &params.revenue_windows_days {
        columns.push(frame.column(&format!("revenue_{days}d"))?.clone());
    }
    columns.extend([
        average_order_value,
        Column::new("avg_days_between_orders".into(), between),
        recency_days,
        r_score,
        f_score,
        m_score,
        names_column("cohort", &COHORTS, &cohort),
        Column::new("frequency".into(), &inputs.frequency),
        Column::new("recency".into(), &inputs.recency),
        Column::new("age".into(), &inputs.age),
        match alive {
            Some(alive) => Column::new("probability_alive".into(), alive),
            None => Column::full_null("probability_alive".into(), height, &DataType::Float64),
        },
        predicted(
            "expected_purchases",
            predictions
                .as_ref()
                .map(|p| p.expected_purchases.as_slice()),
        ),
        predicted(
            "expected_order_value",
            predictions
                .as_ref()
                .map(|p| p.expected_order_value.as_slice()),
        ),
        predicted("clv", predictions.as_ref().map(|p| p.clv.as_slice())),
        Column::new("churn_risk".into(), churn),
        names_column("rfm_segment", &segment_names, &segment),
        super::text_scalar("as_of", &as_of.date().to_string(), height),
        super::text_scalar("run_id", &ctx.run_id, height),
    ]);
    Ok(Output {
        frame: DataFrame::new(height, columns)?,
        segments: count_names(&segment_names, &segment),
        cohorts: count_names(&COHORTS, &cohort),
    })
}

/// One row of the holdout comparison: customers with a given number of
/// repeat purchases in calibration.
#[derive(Debug, Clone, Serialize)]
pub struct HoldoutGroup {
    /// `0`, `1`, ..., or `7+`.
    pub frequency: String,
    pub customers: usize,
    pub actual_mean: f64,
    pub predicted_mean: f64,
}

/// Predicted against actual purchases in a holdout period.
#[derive(Debug, Clone, Serialize)]
pub struct HoldoutReport {
    pub calibration_end: String,
    pub holdout_end: String,
    pub holdout_length: f64,
    pub time_unit: &'static str,
    pub customers: usize,
    pub bgnbd: Value,
    pub actual_total: f64,
    pub predicted_total: f64,
    pub groups: Vec<HoldoutGroup>,
}

/// Fits BG/NBD on the orders through `until` (the calibration period) and
/// compares its predictions with the purchases made after it, through
/// `end` (default: the last order). Only customers whose first purchase
/// falls in the calibration period take part.
pub fn holdout(
    orders: LazyFrame,
    until: NaiveDate,
    end: Option<NaiveDate>,
    unit: TimeUnit,
) -> Result<HoldoutReport> {
    let calibration = AsOf::end_of_day(until);
    let all = counted_orders(orders, i64::MAX);
    let days = all
        .group_by([col("contact_id"), col("day")])
        .agg([col("amount").sum().alias("value")])
        .collect()?;
    let last_order_day = days
        .column("day")?
        .as_materialized_series()
        .max::<i64>()?
        .ok_or_else(|| Error::Data("the orders table has no counted order".into()))?;
    let end = match end {
        Some(date) => AsOf::end_of_day(date),
        None => AsOf {
            end_micros: (last_order_day + 1) * MICROS_PER_DAY,
            day: last_order_day,
        },
    };
    if end.day <= calibration.day {
        return Err(Error::Config(format!(
            "the holdout period is empty: the calibration ends {} and the holdout {}; give \
             --until a date before the last order",
            calibration.date(),
            end.date()
        )));
    }
    let per_customer = days
        .lazy()
        .filter(col("day").lt_eq(lit(end.day)))
        .group_by([col("contact_id")])
        .agg([
            col("day").min().alias("first_day"),
            col("day")
                .filter(col("day").lt_eq(lit(calibration.day)))
                .max()
                .alias("last_day"),
            col("day")
                .filter(col("day").lt_eq(lit(calibration.day)))
                .len()
                .cast(DataType::Int64)
                .alias("calibration_days"),
            col("day")
                .filter(col("day").gt(lit(calibration.day)))
                .len()
                .cast(DataType::Int64)
                .alias("holdout_days"),
        ])
        .filter(col("first_day").lt_eq(lit(calibration.day)))
        .sort(["contact_id"], SortMultipleOptions::default())
        .collect()?;
    let first = column_i64(&per_customer, "first_day")?;
    let last = column_i64(&per_customer, "last_day")?;
    let count = column_i64(&per_customer, "calibration_days")?;
    let holdout_days = column_i64(&per_customer, "holdout_days")?;
    let days_per_unit = unit.days();
    let mut x = Vec::with_capacity(first.len());
    let mut t_x = Vec::with_capacity(first.len());
    let mut t = Vec::with_capacity(first.len());
    for i in 0..first.len() {
        let (Some(f), Some(l), Some(c)) = (first[i], last[i], count[i]) else {
            continue;
        };
        x.push((c - 1) as f64);
        t_x.push((l - f) as f64 / days_per_unit);
        t.push((calibration.day - f) as f64 / days_per_unit);
    }
    if x.is_empty() {
        return Err(Error::Data(format!(
            "no customer made a first purchase on or before {}",
            calibration.date()
        )));
    }
    let fit = model::fit_bgnbd(&x, &t_x, &t)
        .map_err(|e| Error::Data(format!("the BG/NBD fit failed: {e}")))?;
    let length = (end.day - calibration.day) as f64 / days_per_unit;
    let mut groups: BTreeMap<usize, (usize, f64, f64)> = BTreeMap::new();
    let (mut actual_total, mut predicted_total) = (0.0, 0.0);
    for i in 0..x.len() {
        let predicted = fit
            .params
            .conditional_expected_purchases(length, x[i], t_x[i], t[i]);
        let actual = holdout_days[i].unwrap_or(0) as f64;
        actual_total += actual;
        predicted_total += predicted;
        let group = groups.entry((x[i] as usize).min(7)).or_default();
        group.0 += 1;
        group.1 += actual;
        group.2 += predicted;
    }
    let groups = groups
        .into_iter()
        .map(|(k, (n, actual, predicted))| HoldoutGroup {
            frequency: if k == 7 { "7+".into() } else { k.to_string() },
            customers: n,
            actual_mean: actual / n as f64,
            predicted_mean: predicted / n as f64,
        })
        .collect();
    Ok(HoldoutReport {
        calibration_end: calibration.date().to_string(),
        holdout_end: end.date().to_string(),
        holdout_length: length,
        time_unit: unit.name(),
        customers: x.len(),
        bgnbd: bgnbd_json(&fit, x.len()),
        actual_total,
        predicted_total,
        groups,
    })
}

/// Wall time per phase of the job, for the manifest.
#[derive(Debug)]
struct PhaseTimer {
    last: std::time::Instant,
    phases: Map<String, Value>,
}

impl Default for PhaseTimer {
    fn default() -> Self {
        Self {
            last: std::time::Instant::now(),
            phases: Map::new(),
        }
    }
}

impl PhaseTimer {
    fn lap(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        let seconds = (now - self.last).as_secs_f64();
        self.phases.insert(
            phase.to_string(),
            Value::from((seconds * 1000.0).round() / 1000.0),
        );
        self.last = now;
    }

    fn into_json(self) -> Value {
        Value::Object(self.phases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_column(values: &[&str]) -> StringChunked {
        StringChunked::from_slice("contact_id".into(), values)
            .rechunk()
            .into_owned()
    }

    #[test]
    fn same_id_compares_inline_and_stored_ids() {
        let ids = id_column(&[
            "c1",
            "c1",
            "c2",
            "twelve-bytes",
            "twelve-bytes",
            "twelve-bytez",
            "a-longer-contact-id-1",
            "a-longer-contact-id-1",
            "a-longer-contact-id-2",
            "",
            "",
        ]);
        let ids = ids.downcast_as_array();
        assert!(same_id(ids, 0, 1));
        assert!(!same_id(ids, 0, 2));
        assert!(same_id(ids, 3, 4));
        assert!(!same_id(ids, 3, 5));
        assert!(same_id(ids, 6, 7));
        assert!(!same_id(ids, 6, 8));
        assert!(!same_id(ids, 0, 6));
        assert!(same_id(ids, 9, 10));
        assert!(!same_id(ids, 9, 0));
    }

    #[test]
    fn ids_sharing_a_hash_stay_apart() {
        let ids = id_column(&["b", "a", "b", "a", "a-longer-contact-id"]);
        let ids = ids.downcast_as_array();
        let mut keys: Vec<OrderKey> = (0..5)
            .map(|row| OrderKey {
                hash: 7,
                day: row,
                row: row as u32,
                micros: 0,
                units: 0,
            })
            .collect();
        let runs = customer_runs(&mut keys, ids);
        let customers: Vec<Vec<u32>> = runs
            .iter()
            .map(|&(start, end)| keys[start..end].iter().map(|key| key.row).collect())
            .collect();
        assert_eq!(customers, vec![vec![1, 3], vec![4], vec![0, 2]]);
    }
}
