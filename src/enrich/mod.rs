//! Firmographic enrichment: which company domain a contact belongs to, and
//! the providers that describe a domain (an HTTP API, or a vendor's file).

pub mod http;

/// Free-mail and disposable providers whose domains say nothing about a
/// contact's company. A pipeline can add to this list or replace it.
pub const FREE_MAIL_DOMAINS: &[&str] = &[
    "aol.com",
    "bigpond.com",
    "bigpond.net.au",
    "dodo.com.au",
    "gmail.com",
    "googlemail.com",
    "gmx.com",
    "gmx.de",
    "gmx.net",
    "hotmail.co.uk",
    "hotmail.com.au",
    "hotmail.com",
    "hotmail.de",
    "hotmail.fr",
    "icloud.com",
    "iinet.net.au",
    "internode.on.net",
    "live.com",
    "live.com.au",
    "mac.com",
    "mail.com",
    "mail.ru",
    "me.com",
    "msn.com",
    "optusnet.com.au",
    "outlook.com",
    "outlook.com.au",
    "ozemail.com.au",
    "proton.me",
    "protonmail.com",
    "qq.com",
    "t-online.de",
    "tpg.com.au",
    "web.de",
    "westnet.com.au",
    "yahoo.co.uk",
    "yahoo.com",
    "yahoo.com.au",
    "yahoo.fr",
    "yandex.ru",
    "zoho.com",
    // Disposable addresses.
    "10minutemail.com",
    "guerrillamail.com",
    "mailinator.com",
    "sharklasers.com",
    "temp-mail.org",
    "throwawaymail.com",
    "trashmail.com",
    "yopmail.com",
];

/// Normalizes a company domain as people write it: trimmed, lower-cased,
/// without a scheme, `www.`, path, port or trailing dot. Returns `None` for
/// text that is no domain (no dot, spaces, empty labels).
pub fn normalize_domain(text: &str) -> Option<String> {
    let mut domain = text.trim().to_lowercase();
    for scheme in ["https://", "http://"] {
        if let Some(rest) = domain.strip_prefix(scheme) {
            domain = rest.to_string();
        }
    }
    if let Some(at) = domain.rfind('@') {
        domain = domain[at + 1..].to_string();
    }
    let end = domain.find(['/', '?', '#', ':']).unwrap_or(domain.len());
    domain.truncate(end);
    let domain = domain.trim_end_matches('.');
    let domain = domain.strip_prefix("www.").unwrap_or(domain);
    let valid = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        });
    valid.then(|| domain.to_string())
}

/// Returns true when `domain` is a free-mail or disposable domain of
/// `free`, or one typing error away from one (gmial.com, hotmail.con), as
/// misspelt consumer addresses are no company either.
pub fn is_free_mail(domain: &str, free: &std::collections::BTreeSet<String>) -> bool {
    if free.contains(domain) {
        return true;
    }
    free.iter().any(|f| {
        f.len().abs_diff(domain.len()) <= 1
            && crate::dedupe::matching::levenshtein(f, domain) <= 1
            && f.len() >= 7
    })
}

/// The domain of an email address, if it has one.
pub fn email_domain(email: &str) -> Option<String> {
    let (_, domain) = email.trim().rsplit_once('@')?;
    normalize_domain(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized() {
        assert_eq!(
            normalize_domain(" https://www.Acme.COM/about "),
            Some("acme.com".into())
        );
        assert_eq!(normalize_domain("acme.co.uk."), Some("acme.co.uk".into()));
        assert_eq!(normalize_domain("acme.com:443"), Some("acme.com".into()));
        assert_eq!(normalize_domain("n/a"), None);
        assert_eq!(normalize_domain("localhost"), None);
        assert_eq!(normalize_domain("a..b"), None);
        assert_eq!(normalize_domain("acme com.org"), None);
        assert_eq!(
            email_domain("Jo@Sales.Acme.com"),
            Some("sales.acme.com".into())
        );
        assert_eq!(email_domain("no-at-sign"), None);
    }
}
