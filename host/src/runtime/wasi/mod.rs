//! The shims that stand between guests and wasmtime-wasi: each replaces one
//! WASI import, checks or adds what wasmhost needs, and when it lets the call
//! through, calls wasmtime-wasi's own implementation with the same arguments.
//!
//! - `p1_sleep`: a wasip1 sleep that a stop or timeout can cut short;
//! - `limits`: `max_open_files`, the handle table, path lengths;
//! - `quota`, `quota_p1`, `quota_p2`, `quota_p2_streams`: volume usage and
//!   quotas.

pub mod limits;
pub mod p1_sleep;
pub mod quota;
pub mod quota_p1;
pub mod quota_p2;
pub mod quota_p2_streams;
