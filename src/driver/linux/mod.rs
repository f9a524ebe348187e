//! The engine-neutral Linux parts that every driver of a local engine shares:
//! none of them speaks to an engine.
//!
//! - [`direct`]: the direct transport: hotpool's init program, the runtime
//!   directory, and each container's named pipes and exit report.
//! - [`cgroup`]: a container's CPU, memory and OOM-kill counters, read straight
//!   from the kernel's cgroup files.
//! - [`footprint`]: what a container holds while it waits (processes, their
//!   memory, its cgroup's memory).
//! - [`pidfd`]: a handle on a container's init, to kill it straight from
//!   hotpool.
//! - [`pool_lock`]: one owner per pool name on an engine, as a lock file in the
//!   runtime directory.
//! - [`stderr`]: a container's stderr on its way to the task's sink, its tail
//!   kept for `exited` errors.
//! - [`credentials`]: registry credentials from the Docker config file, as
//!   `docker login` writes them (any engine's pulls use them).

pub(crate) mod call_mark;
pub(crate) mod cgroup;
pub(crate) mod credentials;
pub(crate) mod direct;
pub(crate) mod footprint;
pub(crate) mod pidfd;
pub(crate) mod pool_lock;
pub(crate) mod stderr;
