//! hotpool: a hot-container pool scheduler.
//!
//! Functions ship as container images. A cold call starts a container, feeds the
//! request on stdin, reads the response from stdout and removes the container. The
//! [`driver`] module holds the contract every runtime implements and the Docker
//! driver that talks to a real engine; [`stats`] down-samples the engine's resource
//! samples; [`error`] names every way a call can fail.

#![warn(missing_docs, unreachable_pub)]

pub mod driver;
pub mod error;
pub mod id;
pub mod image;
pub mod pool;
pub mod stats;
pub mod units;

pub use error::{CallError, ErrorKind};
