//! What starts a function other than a caller: web requests (`http`) and
//! the clock (`schedule`).

pub mod http;
pub mod schedule;
