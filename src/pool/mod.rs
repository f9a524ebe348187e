//! The hot pool: hot containers per function, handed out one call at a time.

mod spec;

pub use spec::{Format, FunctionKey, FunctionSpec};
