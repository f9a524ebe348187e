//! hotpool: a hot-container pool scheduler.
//!
//! Functions ship as container images. A cold call starts a container, feeds the
//! request on stdin, reads the response from stdout and removes the container; a
//! hot call reuses a container that is already running. The [`pool`] keeps hot
//! containers per function and hands one out per call; the [`driver`] module holds
//! the contract every runtime implements and the Docker driver that talks to a real
//! engine; [`stats`] down-samples the engine's resource samples; [`error`] names
//! every way a call can fail; [`server`] and [`config`] are `hotpool serve`.

#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod driver;
pub mod error;
pub mod format;
pub mod id;
pub mod image;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod stats;
pub mod units;

pub use error::{CallError, ErrorKind};
