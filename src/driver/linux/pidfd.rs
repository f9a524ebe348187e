//! A handle on one process of this host (a pidfd), to kill it without asking
//! its engine and without the risk of a reused pid.
//!
//! containerd's runc shim kills a task by running `runc kill` while it holds
//! the task's lock; the task's own exit, coming meanwhile, stalls the shim's
//! exit handling behind that lock, and with many kills at once in a shim
//! serving many containers every exit then waits a second in its reaper
//! (seen here on containerd 1.6: a hundred kills took minutes). SIGKILL sent
//! straight to a container's init (PID 1 of its PID namespace, so every
//! process in it goes too) leaves the shim only the exit to handle.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An open handle on a process.
#[derive(Debug)]
pub(crate) struct ProcessHandle(OwnedFd);

impl ProcessHandle {
    /// Opens a handle on process `pid` of hotpool's PID namespace; fails if it
    /// is not there (gone, or in a namespace hotpool does not see).
    pub(crate) fn open(pid: u32) -> io::Result<ProcessHandle> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: the fd was just returned by the kernel and is owned by no one else.
        Ok(ProcessHandle(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends SIGKILL to the process; one that has exited already is fine.
    pub(crate) fn kill(&self) -> io::Result<()> {
        // SAFETY: the fd is a pidfd this handle owns; no siginfo, no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match sent {
            0 => Ok(()),
            _ => match io::Error::last_os_error() {
                gone if gone.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                error => Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_killed_through_its_handle_and_killing_it_again_is_fine() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start sleep");
        let handle = ProcessHandle::open(child.id()).expect("a handle on a live child");
        handle.kill().expect("kill");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        handle
            .kill()
            .expect("a reaped process is fine to kill again");
    }

    #[test]
    fn no_handle_opens_on_a_process_that_is_not_there() {
        let error = ProcessHandle::open(i32::MAX as u32).expect_err("no such pid");
        assert_eq!(error.raw_os_error(), Some(libc::ESRCH));
    }
}
