//! The node's embedded storage, a library: the SQLite database in the data
//! dir ([`db`]), the model store on it ([`ModelStore`]: content-addressed
//! model files and their registry) and the GGUF header reader the store
//! describes models with ([`gguf`]).
//!
//! The data server reports on it; compute loads models from it; the cluster
//! state and backups read and write it. It imports no other crate of ours.

pub mod db;
pub mod gguf;
mod store;

pub use store::*;
