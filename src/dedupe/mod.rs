//! Contact deduplication: match keys, blocking, the Fellegi-Sunter model
//! and clusters. The job kind that applies them is [`crate::jobs::dedupe`].

pub mod matching;
