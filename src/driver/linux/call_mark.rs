//! The word behind a direct container's [`crate::driver::CallMark`]: the first
//! byte of a small file in its pipe directory, mapped shared, so a store is a
//! store to the page cache that the next owner maps after this process is gone.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU8;

/// The length of the file and of its mapping: one page.
const LENGTH: usize = 4096;

/// A mapped page whose first byte is the mark.
pub(crate) struct MappedWord {
    page: NonNull<u8>,
}

// SAFETY: the page is only ever reached through an `AtomicU8`.
unsafe impl Send for MappedWord {}
// SAFETY: as above.
unsafe impl Sync for MappedWord {}

impl MappedWord {
    /// Makes the file at `path` (hotpool's alone: the function cannot mark
    /// itself), zeroed, which reads as busy until marked idle.
    pub(crate) fn create(path: &Path) -> io::Result<MappedWord> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        file.set_len(LENGTH as u64)?;
        MappedWord::map(&file)
    }

    /// Maps the file an earlier owner made at `path`.
    pub(crate) fn open(path: &Path) -> io::Result<MappedWord> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        if file.metadata()?.len() != LENGTH as u64 {
            return Err(io::Error::other(format!(
                "{} is not a call mark",
                path.display()
            )));
        }
        MappedWord::map(&file)
    }

    fn map(file: &File) -> io::Result<MappedWord> {
        // SAFETY: a fresh shared mapping of a file at least LENGTH long; the
        // file may close once it is mapped.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LENGTH,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page =
            NonNull::new(page.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(MappedWord { page })
    }

    /// The mark's byte.
    pub(crate) fn cell(&self) -> &AtomicU8 {
        // SAFETY: the page is mapped, aligned and lives as long as `self`.
        unsafe { AtomicU8::from_ptr(self.page.as_ptr()) }
    }
}

impl Drop for MappedWord {
    fn drop(&mut self) {
        // SAFETY: mapped by `map` with this length; nothing borrows it now.
        unsafe {
            libc::munmap(self.page.as_ptr().cast(), LENGTH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::CallMark;

    #[test]
    fn a_mark_outlives_its_mapping_and_reads_back_in_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call");
        let first = CallMark::mapped(MappedWord::create(&path).unwrap());
        assert!(!first.is_idle(), "a fresh mark proves nothing");
        first.idle();
        drop(first);
        let second = CallMark::mapped(MappedWord::open(&path).unwrap());
        assert!(second.is_idle());
        second.busy();
        assert!(!CallMark::mapped(MappedWord::open(&path).unwrap()).is_idle());
    }

    #[test]
    fn a_file_of_another_size_is_no_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call");
        std::fs::write(&path, b"idle").unwrap();
        assert!(MappedWord::open(&path).is_err());
        assert!(
            MappedWord::create(&path).is_err(),
            "an existing file is not made again"
        );
    }
}
