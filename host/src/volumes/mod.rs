//! Volumes: the directories guests mount, and everything the host does
//! with them.
pub mod disk;
pub mod files;
pub mod snapshots;
pub mod sparse;
pub mod usage;
pub mod walk;

pub use walk::Cursor;
