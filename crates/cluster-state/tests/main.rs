//! The crate's integration tests, one binary (a binary per file would link the
//! whole dependency tree once per file).

#[path = "../../cluster/tests/support/mod.rs"]
mod support;

mod models;
mod shared;
mod spending;
mod views;
