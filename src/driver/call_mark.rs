//! Where a hot container's owner notes whether the container is between calls,
//! kept where a later owner can read it.
//!
//! A container is between calls when the last request written to it has been
//! answered in full, and nothing has been written since. The pool marks a
//! container busy before it writes a request and idle once the whole answer is
//! read; a new owner (after a crash, or a handover) adopts only a container
//! marked idle. Marking is a store to memory: on the direct transport the word
//! is a page of a file in the container's pipe directory, shared with the
//! kernel's page cache, so it outlives the process that wrote it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::linux::call_mark::MappedWord;

/// The word's values. Zero (a fresh file) reads as busy: nothing proved it idle.
const IDLE: u8 = 1;
const BUSY: u8 = 2;

/// A hot container's between-calls mark. Cheap to clone; every clone is the
/// same mark.
#[derive(Clone)]
pub struct CallMark {
    word: Word,
}

#[derive(Clone)]
enum Word {
    /// A page of a file: survives the process.
    Mapped(Arc<MappedWord>),
    /// Memory of this process alone (drivers with no files to share).
    Memory(Arc<AtomicU8>),
}

impl CallMark {
    /// A mark kept in this process's memory, marked idle.
    pub fn in_memory() -> CallMark {
        CallMark {
            word: Word::Memory(Arc::new(AtomicU8::new(IDLE))),
        }
    }

    pub(crate) fn mapped(word: MappedWord) -> CallMark {
        CallMark {
            word: Word::Mapped(Arc::new(word)),
        }
    }

    fn cell(&self) -> &AtomicU8 {
        match &self.word {
            Word::Mapped(mapped) => mapped.cell(),
            Word::Memory(memory) => memory,
        }
    }

    /// Marks a request about to be written.
    pub fn busy(&self) {
        self.cell().store(BUSY, Ordering::Release);
    }

    /// Marks the last request answered in full.
    pub fn idle(&self) {
        self.cell().store(IDLE, Ordering::Release);
    }

    /// Whether the container was left between calls.
    pub fn is_idle(&self) -> bool {
        self.cell().load(Ordering::Acquire) == IDLE
    }
}

impl std::fmt::Debug for CallMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMark")
            .field("idle", &self.is_idle())
            .finish()
    }
}
