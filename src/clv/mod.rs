//! Customer lifetime value: the BG/NBD and Gamma-Gamma models. The job
//! kind that applies them is [`crate::jobs::clv`].

pub mod model;
