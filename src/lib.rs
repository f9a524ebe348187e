//! hotpool: a hot-container pool scheduler, as a library.
//!
//! Functions ship as container images. A cold call starts a container, feeds the
//! request on stdin, reads the response from stdout and removes the container; a
//! hot call reuses a container that is already running. The [`pool`] keeps hot
//! containers per function and hands one out per call; the [`driver`] module holds
//! the contract every runtime implements and the Docker driver that talks to a real
//! engine; [`format`](mod@format) frames calls over a container's pipes; [`stats`]
//! down-samples the engine's resource samples; [`error`] names every way a call
//! can fail; [`metrics`] names what the pool measures; [`replay`] runs the pool's
//! scheduling core through a day of a real trace on a virtual clock.
//!
//! `hotpool serve` (its config and the CLI) is the binary of this package, behind
//! the default `server` feature, as is its HTTP API, [`server`] (a router over any
//! driver's pool, so it can also be served, or tested, in-process); an embedder
//! turns it off with `default-features = false`. The `test-util` feature adds the
//! in-process driver.

#![warn(missing_docs, unreachable_pub)]

pub mod driver;
pub mod error;
pub mod format;
mod id;
pub mod image;
pub mod metrics;
pub mod pool;
pub mod replay;
#[cfg(feature = "server")]
pub mod server;
pub mod stats;

pub use error::{CallError, ErrorKind};
