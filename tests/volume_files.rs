//! Host commands on volume files against hostile guests (issue 9: items 6, 9, 10, 11, 17).

mod common;
