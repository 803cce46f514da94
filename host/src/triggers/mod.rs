//! What starts a function other than a caller: web requests (`http`).

pub mod http;
