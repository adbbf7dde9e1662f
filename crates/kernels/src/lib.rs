//! The engines' numeric kernels, on plain `f32` slices: what the speech and
//! embedding models spend their time in.
//!
//! A crate of its own so that it builds without debug assertions and
//! overflow checks (the workspace's `[profile.release.package]`), as the
//! dependencies do, while the other crates keep theirs armed for the tests:
//! in these loops a check per value (on index arithmetic, on each pointer
//! step and load of an intrinsic) halved the speed.

mod attention;
pub mod half;
pub mod matmul;
mod vector;

pub use attention::{Strided, attend_packed, attend_query};
pub use vector::{dot, erf, exp, gelu, layer_norm, map_in_place, matvec, softmax, sum};
