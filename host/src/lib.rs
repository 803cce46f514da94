//! wasmhost: serverless WebAssembly functions with shared, lockable volumes.
//!
//! Data flows one way: app.toml -> [`manifest`] -> app in the [`registry`]
//! -> mounted [`volumes`] -> [`runtime`] instances -> results ([`invoke`]).

pub mod apps;
pub mod atomic_file;
pub mod calls;
pub mod digest;
pub mod error;
pub mod file_store;
pub mod home;
pub mod housekeeping;
pub mod invoke;
pub mod lease;
pub mod locks;
pub mod manifest;
pub mod module_store;
pub mod mount;
pub mod names;
pub mod node;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod text;
pub mod triggers;
pub mod views;
pub mod volumes;
