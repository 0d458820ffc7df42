//! The HTTP provider: one GET per domain, at a bounded concurrency and a
//! steady rate, with retries on 429, 5xx, timeouts and connection errors
//! (exponential backoff with jitter, honouring Retry-After), within a
//! request budget per run.
//!
//! Every domain handed to [`fetch_all`] comes back exactly once: found,
//! not found, an error with its reason, or deferred because the budget ran
//! out before its first request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

/// The HTTP provider's settings, from `[params.http]` of a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpProvider {
    /// The request URL with `{domain}` where the domain goes, in the path
    /// or the query: `https://api.example.com/v2/companies?domain={domain}`.
    pub url: String,
    /// The environment variable holding the API key; the key is read from
    /// the environment only.
    pub api_key_env: Option<String>,
    /// The header the key goes in.
    #[serde(default = "default_key_header")]
    pub api_key_header: String,
    /// Text before the key in the header, such as `Bearer `.
    #[serde(default)]
    pub api_key_prefix: String,
    /// Our column to a JSON pointer into the response, e.g.
    /// `employee_count = "/metrics/employees"`.
    pub fields: BTreeMap<String, String>,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Requests started per second, retries included.
    #[serde(default = "default_rate")]
    pub requests_per_second: f64,
    /// Retries of one domain after its first request.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Time allowed for one request.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// Requests per run, retries included; the domains left wait for the
    /// next run.
    pub request_budget: Option<u64>,
    /// Statuses that mean the provider has no such company.
    #[serde(default = "default_not_found")]
    pub not_found_status: Vec<u16>,
    /// The first backoff before a retry, doubled each time.
    #[serde(default = "default_backoff")]
    pub backoff_seconds: f64,
}

fn default_key_header() -> String {
    "Authorization".into()
}
fn default_concurrency() -> usize {
    8
}
fn default_rate() -> f64 {
    10.0
}
fn default_retries() -> u32 {
    4
}
fn default_timeout() -> f64 {
    10.0
}
fn default_not_found() -> Vec<u16> {
    vec![404]
}
fn default_backoff() -> f64 {
    0.5
}

impl HttpProvider {
    /// Checks the settings without reading the environment.
    pub fn validate(&self) -> Result<(), String> {
        if !self.url.contains("{domain}") {
            return Err(format!(
                "http.url `{}` has no {{domain}} placeholder; write it where the domain goes, \
                 e.g. https://api.example.com/companies?domain={{domain}}",
                self.url
            ));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "http.url `{}` must start with http:// or https://",
                self.url
            ));
        }
        if self.fields.is_empty() {
            return Err("http.fields is empty: map at least one column to a JSON pointer".into());
        }
        for (column, pointer) in &self.fields {
            if !pointer.starts_with('/') {
                return Err(format!(
                    "http.fields.{column} = `{pointer}` is not a JSON pointer; write it like \
                     \"/company/name\""
                ));
            }
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err("http.concurrency must be between 1 and 1024".into());
        }
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            return Err("http.requests_per_second must be a positive number".into());
        }
        if !(self.timeout_seconds.is_finite() && self.timeout_seconds > 0.0) {
            return Err("http.timeout_seconds must be a positive number".into());
        }
        if !(self.backoff_seconds.is_finite() && self.backoff_seconds >= 0.0) {
            return Err("http.backoff_seconds must be 0 or more".into());
        }
        Ok(())
    }
}

/// The provider's result for one domain.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Found(BTreeMap<String, Value>),
    NotFound,
    /// The last error, after every retry.
    Error(String),
    /// Not requested: the request budget ran out first.
    Deferred,
}

/// One domain's outcome.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub domain: String,
    pub answer: Answer,
    /// Requests made for the domain.
    pub attempts: u32,
    /// The last HTTP status, if any response arrived.
    pub http_status: Option<u16>,
}

/// Totals of a fetch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchStats {
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub seconds: f64,
}

/// Spaces request starts `interval` apart across all tasks.
struct Pacer {
    next: Mutex<Instant>,
    interval: Duration,
}

impl Pacer {
    async fn wait(&self) {
        let start = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + self.interval;
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }

    /// Pushes every later start back to at least `until`, after the server
    /// asked for a pause.
    async fn hold_until(&self, until: Instant) {
        let mut next = self.next.lock().await;
        if *next < until {
            *next = until;
        }
    }
}

/// Requests every domain and returns one [`Fetched`] per domain, in the
/// order given.
pub fn fetch_all(
    provider: &HttpProvider,
    api_key: Option<&str>,
    domains: Vec<String>,
) -> Result<(Vec<Fetched>, FetchStats), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP client: {e}"))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(provider.timeout_seconds))
        .pool_max_idle_per_host(provider.concurrency)
        .build()
        .map_err(|e| format!("cannot start the HTTP client: {}", e.without_url()))?;
    let header = match api_key {
        Some(key) => {
            let value = format!("{}{key}", provider.api_key_prefix);
            let value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                "the API key holds characters an HTTP header cannot carry".to_string()
            })?;
            let name = reqwest::header::HeaderName::from_bytes(provider.api_key_header.as_bytes())
                .map_err(|_| {
                    format!(
                        "http.api_key_header `{}` is not a valid header name",
                        provider.api_key_header
                    )
                })?;
            Some((name, value))
        }
        None => None,
    };
    let started = Instant::now();
    let pacer = Arc::new(Pacer {
        next: Mutex::new(Instant::now()),
        interval: Duration::from_secs_f64(1.0 / provider.requests_per_second),
    });
    let budget = Arc::new(AtomicU64::new(provider.request_budget.unwrap_or(u64::MAX)));
    let requests = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let fetched: Vec<Fetched> = runtime
        .block_on(async {
            futures::stream::iter(domains.into_iter().enumerate())
                .map(|(index, domain)| {
                    let client = client.clone();
                    let pacer = pacer.clone();
                    let budget = budget.clone();
                    let requests = requests.clone();
                    let throttled = throttled.clone();
                    let header = header.clone();
                    async move {
                        let mut rng = rand::rngs::SmallRng::seed_from_u64(index as u64);
                        let fetched = fetch_one(
                            provider, &client, &pacer, &budget, &requests, &throttled, header,
                            domain, &mut rng,
                        )
                        .await;
                        (index, fetched)
                    }
                })
                .buffer_unordered(provider.concurrency)
                .collect::<Vec<_>>()
                .await
        })
        .into_iter()
        .collect::<BTreeMap<usize, Fetched>>()
        .into_values()
        .collect();
    let requests = requests.load(Ordering::SeqCst);
    let first_requests = fetched.iter().filter(|f| f.attempts > 0).count() as u64;
    Ok((
        fetched,
        FetchStats {
            requests,
            retries: requests.saturating_sub(first_requests),
            throttled: throttled.load(Ordering::SeqCst),
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

/// Takes one request from the budget; false when it is spent.
fn take_budget(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

#[allow(clippy::too_many_arguments)]
async fn fetch_one(
    provider: &HttpProvider,
    client: &reqwest::Client,
    pacer: &Pacer,
    budget: &AtomicU64,
    requests: &AtomicU64,
    throttled: &AtomicU64,
    header: Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    domain: String,
    rng: &mut rand::rngs::SmallRng,
) -> Fetched {
    let url = provider.url.replace("{domain}", &encode(&domain));
    let mut attempts = 0u32;
    let mut http_status = None;
    let mut last_error = String::new();
    loop {
        if !take_budget(budget) {
            let answer = if attempts == 0 {
                Answer::Deferred
            } else {
                Answer::Error(format!(
                    "{last_error}; the request budget ran out before a retry"
                ))
            };
            return Fetched {
                domain,
                answer,
                attempts,
                http_status,
            };
        }
        pacer.wait().await;
        attempts += 1;
        requests.fetch_add(1, Ordering::SeqCst);
        let mut request = client.get(&url).header("accept", "application/json");
        if let Some((name, value)) = &header {
            request = request.header(name.clone(), value.clone());
        }
        let mut retry_after = None;
        let retryable = match request.send().await {
            Ok(response) => {
                let status = response.status();
                http_status = Some(status.as_u16());
                if status.is_success() {
                    let answer = match response.bytes().await {
                        Ok(body) => parse_body(provider, &body),
                        Err(e) => {
                            Answer::Error(format!("cannot read the response: {}", e.without_url()))
                        }
                    };
                    let retry = matches!(&answer, Answer::Error(m) if m.starts_with("cannot read"));
                    if !retry {
                        return Fetched {
                            domain,
                            answer,
                            attempts,
                            http_status,
                        };
                    }
                    last_error = match answer {
                        Answer::Error(m) => m,
                        _ => String::new(),
                    };
                    true
                } else if provider.not_found_status.contains(&status.as_u16()) {
                    return Fetched {
                        domain,
                        answer: Answer::NotFound,
                        attempts,
                        http_status,
                    };
                } else if status.as_u16() == 429 || status.is_server_error() {
                    if status.as_u16() == 429 {
                        throttled.fetch_add(1, Ordering::SeqCst);
                    }
                    retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    last_error = format!("the provider answered {status}");
                    true
                } else {
                    last_error = format!("the provider answered {status}");
                    false
                }
            }
            Err(e) => {
                last_error = if e.is_timeout() {
                    format!(
                        "no answer within {} s (timeout_seconds)",
                        provider.timeout_seconds
                    )
                } else {
                    format!("request failed: {}", e.without_url())
                };
                true
            }
        };
        if !retryable || attempts > provider.max_retries {
            return Fetched {
                domain,
                answer: Answer::Error(last_error),
                attempts,
                http_status,
            };
        }
        // Exponential backoff with full jitter, or what the server asked.
        let base = provider.backoff_seconds * 2f64.powi(attempts as i32 - 1);
        let delay = match retry_after {
            Some(seconds) => seconds,
            None => rng.gen_range(0.0..=base.max(0.0)) + base / 2.0,
        };
        let until = Instant::now() + Duration::from_secs_f64(delay.min(300.0));
        if retry_after.is_some() {
            pacer.hold_until(until).await;
        }
        tokio::time::sleep_until(until.into()).await;
    }
}

/// Reads Retry-After: seconds, or an HTTP date.
fn parse_retry_after(value: &str) -> Option<f64> {
    if let Ok(seconds) = value.trim().parse::<f64>() {
        return Some(seconds.max(0.0));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let seconds = (date.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some((seconds as f64 / 1000.0).max(0.0))
}

/// Maps a JSON response onto our columns. A missing field is null.
fn parse_body(provider: &HttpProvider, body: &[u8]) -> Answer {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Answer::Error("the provider responded 200 with an empty body".into());
    }
    let json: Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(e) => return Answer::Error(format!("the provider's response is not JSON: {e}")),
    };
    if !json.is_object() {
        return Answer::Error("the provider's response is not a JSON object".into());
    }
    let mut values = BTreeMap::new();
    for (column, pointer) in &provider.fields {
        let value = json.pointer(pointer).cloned().unwrap_or(Value::Null);
        values.insert(column.clone(), value);
    }
    Answer::Found(values)
}

/// Percent-encodes a domain for a URL path or query.
fn encode(domain: &str) -> String {
    let mut out = String::with_capacity(domain.len());
    for byte in domain.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(3.0));
        assert_eq!(parse_retry_after(" 0 "), Some(0.0));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let seconds = parse_retry_after(&later).unwrap();
        assert!((28.0..=30.0).contains(&seconds), "{seconds}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn domains_are_encoded() {
        assert_eq!(encode("acme.com"), "acme.com");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn answers_map_pointers_to_columns() {
        let provider = HttpProvider {
            url: "http://127.0.0.1/{domain}".into(),
            api_key_env: None,
            api_key_header: default_key_header(),
            api_key_prefix: String::new(),
            fields: [("industry".to_string(), "/company/industry".to_string())]
                .into_iter()
                .collect(),
            concurrency: 1,
            requests_per_second: 1.0,
            max_retries: 0,
            timeout_seconds: 1.0,
            request_budget: None,
            not_found_status: vec![404],
            backoff_seconds: 0.0,
        };
        let answer = parse_body(&provider, br#"{"company": {"industry": "Retail"}}"#);
        let Answer::Found(values) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(values["industry"], Value::from("Retail"));
        assert!(matches!(parse_body(&provider, b""), Answer::Error(m) if m.contains("empty")));
        assert!(
            matches!(parse_body(&provider, b"{oops"), Answer::Error(m) if m.contains("not JSON"))
        );
        assert!(matches!(parse_body(&provider, b"[1]"), Answer::Error(m) if m.contains("object")));
        assert!(provider.validate().is_ok());
    }
}
