//! The crate's integration tests, one binary (a binary per file would link the
//! whole dependency tree once per file).

mod tegrastats;
mod tegrastats_source;
