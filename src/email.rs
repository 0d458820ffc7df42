//! Email addresses: the normalization policy that turns an address into
//! its matching key, syntax validity, and role addresses.
//!
//! The policy is named and versioned (`nightshift-email`, version 1) and
//! recorded in every manifest, so that a list built under one policy is
//! never silently matched under another. It always trims and lower-cases.
//! Three rules are opt-in, because they merge addresses some providers
//! treat as different mailboxes: `googlemail.com` as `gmail.com`, dots in
//! Gmail local parts dropped, and `+tags` dropped. The stored address is
//! never rewritten; only the key is.

use polars::prelude::*;
use polars_arrow::array::{Array, Utf8ViewArray, View};
use polars_arrow::bitmap::MutableBitmap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The policy's name, recorded in manifests.
pub const POLICY_NAME: &str = "nightshift-email";
/// Raised when the meaning of an option changes.
pub const POLICY_VERSION: u32 = 1;

/// The opt-in rules of the normalization policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Normalization {
    /// `googlemail.com` matches as `gmail.com`.
    pub googlemail: bool,
    /// Dots in Gmail local parts are ignored.
    pub gmail_dots: bool,
    /// A `+tag` in any local part is ignored.
    pub plus_tags: bool,
}

impl Normalization {
    /// The policy as the manifest records it.
    pub fn describe(&self) -> Value {
        json!({
            "policy": POLICY_NAME,
            "version": POLICY_VERSION,
            "googlemail": self.googlemail,
            "gmail_dots": self.gmail_dots,
            "plus_tags": self.plus_tags,
        })
    }

    /// The matching key of an email expression: trimmed, lower-cased, with
    /// the opt-in rules applied; empty strings become null.
    pub fn key(&self, email: Expr) -> Expr {
        self.key_of_normalized(trim_lowercase_expr(email))
    }

    /// Applies the opt-in rules to an address that is already trimmed and
    /// lower-cased (see [`trim_lowercase`]), giving its matching key.
    pub fn key_of_normalized(&self, normalized: Expr) -> Expr {
        let mut key = normalized;
        if self.plus_tags {
            key = key.str().replace(lit(r"\+[^@]*@"), lit("@"), false);
        }
        if self.googlemail {
            key = key
                .str()
                .replace(lit(r"@googlemail\.com$"), lit("@gmail.com"), false);
        }
        if self.gmail_dots {
            let local = key.clone().str().extract(lit(r"^([^@]*)@gmail\.com$"), 1);
            let undotted = local.str().replace_all(lit("."), lit(""), true);
            key = when(undotted.clone().is_not_null())
                .then(concat_str([undotted, lit("@gmail.com")], "", false))
                .otherwise(key);
        }
        key
    }

    /// The key of one address, as [`Normalization::key`] computes it.
    pub fn key_of(&self, email: &str) -> Option<String> {
        let mut key = email.trim().to_lowercase();
        if key.is_empty() {
            return None;
        }
        if let Some((local, domain)) = key.clone().rsplit_once('@') {
            let mut local = local.to_string();
            let mut domain = domain.to_string();
            if self.plus_tags {
                if let Some(plus) = local.find('+') {
                    local.truncate(plus);
                }
            }
            if self.googlemail && domain == "googlemail.com" {
                domain = "gmail.com".into();
            }
            if self.gmail_dots && domain == "gmail.com" {
                local = local.replace('.', "");
            }
            key = format!("{local}@{domain}");
        }
        Some(key)
    }
}

/// Returns `email.trim().to_lowercase()`, or None when that is empty. An
/// ASCII address is lower-cased byte by byte into `buf`, or returned as a
/// slice of `email` when it has no capital letter.
pub fn trim_lowercase<'a>(email: &'a str, buf: &'a mut String) -> Option<&'a str> {
    let trimmed = email.trim();
    if trimmed.is_empty() {
        return None;
    }
    if !trimmed.is_ascii() {
        *buf = trimmed.to_lowercase();
        return Some(buf.as_str());
    }
    if !trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(trimmed);
    }
    buf.clear();
    buf.push_str(trimmed);
    buf.make_ascii_lowercase();
    Some(buf.as_str())
}

/// Trims and lower-cases a string expression as [`trim_lowercase`] does,
/// with empty results as null. Polars' `strip_chars(null)` followed by
/// `to_lowercase` gives the same strings, because in polars-ops 0.55 both
/// follow `str::trim` and `str::to_lowercase`. Polars lower-cases each
/// value after its first 16 bytes one character at a time, which took
/// longer than decoding the column from Parquet on 5.7 million generated
/// addresses, and copies every value.
fn trim_lowercase_expr(email: Expr) -> Expr {
    email.map(
        |column: Column| {
            let column = column.cast(&DataType::String)?;
            let values = column.str()?;
            let chunks = values
                .downcast_iter()
                .map(trim_lowercase_array)
                .collect::<PolarsResult<Vec<_>>>()?;
            let keys = StringChunked::from_chunk_iter(values.name().clone(), chunks);
            Ok(keys.into_column())
        },
        |_, field| Ok(Field::new(field.name().clone(), DataType::String)),
    )
}

/// Applies [`trim_lowercase`] to every value of `array`. A value that
/// stays the same keeps its view into `array`'s buffers, so only changed
/// values are copied, and an array without changes is returned as it is.
fn trim_lowercase_array(array: &Utf8ViewArray) -> PolarsResult<Utf8ViewArray> {
    // Changed values go to one new buffer, after the array's own buffers.
    let changed_buffer = u32::try_from(array.data_buffers().len())
        .map_err(|_| polars_err!(ComputeError: "failed to normalize addresses: a column chunk has more than 2^32 buffers"))?;
    let mut changed_bytes: Vec<u8> = Vec::new();
    let mut views: Option<Vec<View>> = None;
    let mut emptied = Vec::new();
    let mut buf = String::new();
    for (row, value) in array.iter().enumerate() {
        let Some(value) = value else { continue };
        match trim_lowercase(value, &mut buf) {
            Some(key) if std::ptr::eq(key, value) => {}
            None => emptied.push(row),
            Some(key) => {
                let offset = u32::try_from(changed_bytes.len()).map_err(
                    |_| polars_err!(ComputeError: "failed to normalize addresses: the changed values of one column chunk exceed 4 GiB"),
                )?;
                changed_bytes.extend_from_slice(key.as_bytes());
                let views = views.get_or_insert_with(|| array.views().as_slice().to_vec());
                views[row] = View::new_from_bytes(key.as_bytes(), changed_buffer, offset);
            }
        }
    }
    if views.is_none() && emptied.is_empty() {
        return Ok(array.clone());
    }
    let views = views.unwrap_or_else(|| array.views().as_slice().to_vec());
    let validity = if emptied.is_empty() {
        array.validity().cloned()
    } else {
        let mut validity: MutableBitmap = (0..array.len()).map(|i| array.is_valid(i)).collect();
        for row in emptied {
            validity.set(row, false);
        }
        Some(validity.into())
    };
    let mut buffers: Vec<_> = array.data_buffers().iter().cloned().collect();
    buffers.push(changed_bytes.into());
    // SAFETY: the unchanged views point into the array's own buffers, which
    // keep their indices, and each changed view points at the UTF-8 bytes
    // of a `str` in the buffer at `changed_buffer`.
    Ok(unsafe {
        Utf8ViewArray::new_unchecked_unknown_md(
            ArrowDataType::Utf8View,
            views.into(),
            buffers.into(),
            validity,
            None,
        )
    })
}

/// The syntax an address must have to be mailed: an ASCII local part of
/// the usual characters without leading, trailing or double dots, and a
/// domain of at least two labels of letters, digits and hyphens.
pub const VALID_ADDRESS: &str = r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$";

/// True when a trimmed, lower-cased address has valid syntax.
pub fn is_valid(normalized: Expr) -> Expr {
    normalized
        .str()
        .contains(lit(VALID_ADDRESS), true)
        .fill_null(lit(false))
}

/// Local parts that name a function, not a person. A message to them
/// reaches a team or nobody, and complaints from them cost reputation.
pub const ROLE_LOCAL_PARTS: &[&str] = &[
    "abuse",
    "admin",
    "administrator",
    "billing",
    "compliance",
    "contact",
    "devnull",
    "dns",
    "ftp",
    "help",
    "hostmaster",
    "info",
    "list",
    "list-request",
    "mailer-daemon",
    "marketing",
    "no-reply",
    "noc",
    "noreply",
    "null",
    "office",
    "postmaster",
    "privacy",
    "root",
    "sales",
    "security",
    "spam",
    "support",
    "sysadmin",
    "team",
    "webmaster",
];

/// The local part of a normalized address, without a `+tag`.
pub fn local_part(normalized: Expr) -> Expr {
    normalized.str().extract(lit(r"^([^@+]*)"), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(policy: Normalization, emails: &[&str]) -> Vec<Option<String>> {
        let frame = df!("email" => emails).unwrap();
        let out = frame
            .lazy()
            .select([policy.key(col("email")).alias("key")])
            .collect()
            .unwrap();
        out.column("key")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|k| k.map(str::to_string))
            .collect()
    }

    #[test]
    fn default_policy_trims_and_lowercases_only() {
        let emails = [" Jo.Doe+news@GoogleMail.com ", "", "a@b.co"];
        let expected = vec![
            Some("jo.doe+news@googlemail.com".to_string()),
            None,
            Some("a@b.co".into()),
        ];
        assert_eq!(keys(Normalization::default(), &emails), expected);
        for (email, key) in emails.iter().zip(&expected) {
            assert_eq!(&Normalization::default().key_of(email), key);
        }
    }

    #[test]
    fn trim_lowercase_matches_polars_strip_and_lowercase() {
        let emails = [
            "jo@example.com",
            "Jo.Doe@Example.COM",
            " \t\u{b}jo@example.com\r\n",
            "\u{a0}\u{3000}Jo@Example.com\u{2003}",
            "ΣΟΦΙΑ@EXAMPLE.GR",
            "İstanbul@Example.com",
            "ADDRESS.WITH.MORE.THAN.SIXTEEN.BYTES@EXAMPLE.COM",
            "",
            "   ",
        ];
        let frame = df!("email" => emails).unwrap();
        let out = frame
            .lazy()
            .select([
                trim_lowercase_expr(col("email")).alias("fast"),
                col("email")
                    .str()
                    .strip_chars(lit(NULL))
                    .str()
                    .to_lowercase()
                    .alias("polars"),
            ])
            .collect()
            .unwrap();
        let fast = out.column("fast").unwrap().str().unwrap();
        let polars = out.column("polars").unwrap().str().unwrap();
        for (i, email) in emails.iter().enumerate() {
            let expected = polars.get(i).filter(|k| !k.is_empty());
            assert_eq!(fast.get(i), expected, "key of {email:?}");
            let mut buf = String::new();
            assert_eq!(trim_lowercase(email, &mut buf), expected, "{email:?}");
        }
    }

    #[test]
    fn trim_lowercase_keeps_nulls_and_unchanged_values() {
        let emails = [
            Some("unchanged.address@example.com"),
            None,
            Some("  Changed.Address@Example.com"),
            Some(" "),
            Some("short@x.co"),
        ];
        let frame = df!("email" => emails).unwrap();
        let out = frame
            .lazy()
            .select([trim_lowercase_expr(col("email"))])
            .collect()
            .unwrap();
        let values: Vec<_> = out.column("email").unwrap().str().unwrap().iter().collect();
        assert_eq!(
            values,
            [
                Some("unchanged.address@example.com"),
                None,
                Some("changed.address@example.com"),
                None,
                Some("short@x.co"),
            ]
        );
    }

    #[test]
    fn trim_lowercase_returns_normalized_column() {
        let frame = df!("email" => ["a@b.co", "jo@example.com"]).unwrap();
        let out = frame
            .lazy()
            .select([trim_lowercase_expr(col("email"))])
            .collect()
            .unwrap();
        let values: Vec<_> = out.column("email").unwrap().str().unwrap().iter().collect();
        assert_eq!(values, [Some("a@b.co"), Some("jo@example.com")]);
    }

    #[test]
    fn opt_in_rules_merge_gmail_variants() {
        let policy = Normalization {
            googlemail: true,
            gmail_dots: true,
            plus_tags: true,
        };
        let emails = [
            "Jo.Doe+news@GoogleMail.com",
            "jodoe@gmail.com",
            "jo.doe+x@example.com",
        ];
        let expected = vec![
            Some("jodoe@gmail.com".to_string()),
            Some("jodoe@gmail.com".to_string()),
            Some("jo.doe@example.com".to_string()),
        ];
        assert_eq!(keys(policy, &emails), expected);
        for (email, key) in emails.iter().zip(&expected) {
            assert_eq!(&policy.key_of(email), key);
        }
    }

    #[test]
    fn syntax_and_roles() {
        let frame = df!("e" => [
            "jo@example.com", "jo.doe@mail.example.co.uk", "jo@@example.com", "jo doe@example.com",
            ".jo@example.com", "jo..doe@example.com", "jo@example", "jo@-example.com", "info+x@example.com",
        ])
        .unwrap();
        let out = frame
            .lazy()
            .select([
                is_valid(col("e")).alias("valid"),
                local_part(col("e")).alias("local"),
            ])
            .collect()
            .unwrap();
        let valid: Vec<bool> = out
            .column("valid")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(
            valid,
            [true, true, false, false, false, false, false, false, true]
        );
        assert_eq!(
            out.column("local").unwrap().get(8).unwrap(),
            AnyValue::String("info")
        );
    }
}
