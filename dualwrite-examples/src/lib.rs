//! Runnable examples of dualwrite. The library is empty; run an example:
//!
//! ```text
//! cargo run --release --example migrate              # the end-to-end migration on SQLite files
//! cargo run --release --example migrate -- --help    # its options
//! ```
