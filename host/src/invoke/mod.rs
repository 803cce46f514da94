//! One invocation path. A call is prepared once ([`Prepared`]: the
//! function of a live app, its program, mounts, secrets and concurrency
//! slots), supervised once ([`Supervisor`], [`StopFlag`]: a signal, a stop
//! or cancel from the registry, a drain; the runtime keeps the `timeout`),
//! and ends once, in an [`Ended`], which `wasmhost run` and `call`, the
//! node, its HTTP API, web endpoints and schedules only translate.
//!
//! This room sits on the runtime, apps, calls and the registry; it never
//! reaches into the CLI, the node or the triggers, which build on it.

mod ended;
pub mod map;
mod prepare;
pub mod slots;
mod supervise;

pub use ended::{Ended, Stop};
pub use prepare::{Call, Held, NoSlot, Prepared, RegistryAccess};
pub use supervise::{Reservation, Room, STOP_POLL, StopFlag, Supervisor, Watch};
