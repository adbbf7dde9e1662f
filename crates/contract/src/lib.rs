//! What JetsonMind servers agree on across crate and process boundaries.
//!
//! Servers know each other only as MCP peers; where one depends on what
//! another says, the shape is written here once, and both sides use it:
//!
//! - [`access`]: a tool's flags (admin, idempotent, read-only), carried in
//!   the tool itself so they travel through every gateway and rename.
//! - [`replica`]: the status a compute replica reports to the control plane.
//! - [`allocation`]: how a replica keeps models in memory, which compute
//!   applies and `manage_resources` sets.
//! - [`calibration`]: engine settings measured on a replica's model, for
//!   `optimize_system`.
//! - [`resources`]: the URIs of the data server's resources others read.
//! - [`route`]: the route record a result carries back, one hop per router.
//! - [`inference`]: the inference tools the control plane calls or routes by
//!   (their names, the model a call names, generation progress), and the
//!   text tools' arguments and definitions, which a provider serves too.
//!
//! This crate has no behaviour beyond reading and writing these shapes, and
//! one agreement on phrasing: how `code_complete` is asked of a chat model
//! and its answer cut back ([`inference::code`]), so that compute and a
//! provider answer alike.

pub mod access;
pub mod allocation;
pub mod calibration;
pub mod inference;
pub mod replica;
pub mod resources;
pub mod route;
