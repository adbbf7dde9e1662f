//! What the binary composes that is worth testing on its own: the
//! configuration of every server it runs ([`sections`]). The rest of the
//! binary (`main.rs`) wires the servers and has no unit tests.

pub mod sections;
