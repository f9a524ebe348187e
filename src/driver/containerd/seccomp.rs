//! hotpool's seccomp profile for containers on containerd (`seccomp.json`
//! beside this file, in the OCI runtime spec's format).
//!
//! containerd gives no profile of its own over its API (its default lives in
//! its Go client), so hotpool writes one. It is an allow-list: any system call
//! not named fails with `EPERM`. What it allows is what ordinary programs use
//! (files, memory, threads, signals, sockets, timers, System V and POSIX IPC,
//! scheduling of one's own threads). It refuses at least what Docker's default
//! profile refuses to a container without capabilities, among them `mount`,
//! `umount2`, `pivot_root`, `unshare`, `setns`, `keyctl`, `add_key`,
//! `request_key`, `bpf`, `perf_event_open`, `ptrace`, `process_vm_readv` and
//! `process_vm_writev`, `kexec_load`, module loading, `reboot`, `swapon`,
//! `userfaultfd`, `open_by_handle_at`, `acct`, `syslog`, `settimeofday`,
//! `clock_settime`, the NUMA policy calls, the new mount API (`fsopen`,
//! `move_mount`, ...) and `io_uring`. Arguments are checked where Docker's
//! profile checks them: `clone` may not create namespaces, `clone3` answers
//! `ENOSYS` (so the C library falls back to `clone`, whose flags can be
//! checked), and `personality` takes only the harmless values. Only the
//! x86_64 ABI is listed (with the host's own, which runc always adds): 32-bit
//! x86 and x32 system calls are refused.

use std::sync::LazyLock;

/// The profile, as the `linux.seccomp` value of a runtime spec.
pub(crate) fn profile() -> &'static serde_json::Value {
    static PROFILE: LazyLock<serde_json::Value> = LazyLock::new(|| {
        serde_json::from_str(include_str!("seccomp.json")).expect("seccomp.json is JSON")
    });
    &PROFILE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the profile lets through, whatever the arguments.
    fn allowed() -> Vec<String> {
        profile()["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW" && rule.get("args").is_none())
            .flat_map(|rule| rule["names"].as_array().unwrap().iter())
            .map(|name| name.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn it_is_an_allow_list() {
        assert_eq!(profile()["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(allowed().len() > 200, "ordinary programs need their calls");
        for needed in [
            "read",
            "write",
            "execve",
            "mmap",
            "futex",
            "exit_group",
            "wait4",
        ] {
            assert!(allowed().iter().any(|name| name == needed), "{needed}");
        }
    }

    #[test]
    fn what_dockers_default_refuses_is_refused() {
        let refused = [
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "userfaultfd",
            "open_by_handle_at",
            "name_to_handle_at",
            "acct",
            "syslog",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "mbind",
            "set_mempolicy",
            "move_pages",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
            "fspick",
            "fsconfig",
            "io_uring_setup",
            "io_uring_enter",
            "quotactl",
            "lookup_dcookie",
            "iopl",
            "ioperm",
            "kcmp",
            "pidfd_getfd",
            "mount_setattr",
            "fanotify_init",
            "vhangup",
            "uselib",
            "sysfs",
            "ustat",
        ];
        let allowed = allowed();
        let conditional: Vec<&str> = profile()["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule.get("args").is_some())
            .flat_map(|rule| rule["names"].as_array().unwrap().iter())
            .filter_map(|name| name.as_str())
            .collect();
        for name in refused {
            assert!(!allowed.iter().any(|a| a == name), "{name} is allowed");
            assert!(
                !conditional.contains(&name),
                "{name} is allowed on conditions"
            );
        }
    }

    #[test]
    fn clone_may_not_make_namespaces() {
        let clone = profile()["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["names"][0] == "clone")
            .unwrap();
        let namespace_flags = 0x7E02_0000u64;
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], namespace_flags);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
    }
}
