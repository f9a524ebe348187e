//! The OCI runtime spec of a container, written whole by hotpool: on
//! containerd nothing adds defaults, so every line of containment is here.
//!
//! The spec gives what the Docker driver asks of dockerd: the task's user
//! (numeric), no capabilities in any set, `noNewPrivileges`, hotpool's own
//! seccomp profile (`seccomp.rs`), Docker's masked and read-only `/proc` and
//! `/sys` paths, new PID, IPC, UTS, mount, cgroup and network namespaces (the
//! network one configured with nothing: runc brings up loopback alone), the
//! pids limit, memory with swap equal to it (no swap), the CPU quota, the
//! `nofile` limit, a read-only root with a sized tmpfs `/tmp` (`noexec`,
//! `nosuid`, `nodev`, mode 1777, inodes in proportion), no device but runc's
//! defaults, and a cgroup under `/hotpool`. The direct transport's init and
//! pipe directory are bind-mounted in, and the init is the container's PID 1.

use std::collections::BTreeMap;

use serde::Serialize;

use super::pull::ImageConfig;
use crate::driver::linux::direct::{self, Direct};
use crate::driver::{MIN_TMP_SIZE, TMP_BYTES_PER_INODE, Task};
use crate::error::CallError;

/// The annotation that puts containers of one value under one runc shim.
pub(crate) const SHIM_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// The cgroup (of every controller) under which containers' cgroups go.
pub(crate) const CGROUP_PARENT: &str = "/hotpool";

/// The `PATH` of a container whose image names none, as Docker gives it.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The CFS period the CPU quota is a share of, in microseconds.
const CPU_PERIOD: u64 = 100_000;

/// Paths of `/proc` and `/sys` hidden from the container, as Docker hides them.
const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths of `/proc` the container sees read-only, as in Docker.
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The longest host name the kernel takes.
const HOSTNAME_MAX: usize = 63;

/// What a container's spec is made of besides the task.
pub(crate) struct SpecInput<'a> {
    /// containerd's id of the container.
    pub(crate) container_id: &'a str,
    pub(crate) task: &'a Task,
    pub(crate) image: &'a ImageConfig,
    pub(crate) direct: &'a Direct,
    /// The uid and gid the function runs as.
    pub(crate) user: (u32, u32),
    pub(crate) pids_limit: i64,
    pub(crate) nofile_limit: i64,
    /// The shim group the container joins.
    pub(crate) shim_group: &'a str,
}

/// The uid and gid of `user` (`uid[:gid]`, the gid the uid's when left out).
/// A user name would need the image's `/etc/passwd`; containerd has none to
/// ask, so names are refused.
pub(crate) fn numeric_user(user: &str) -> Result<(u32, u32), CallError> {
    direct::numeric_user(user).ok_or_else(|| {
        CallError::engine(format!(
            "user {user:?} is a name: on containerd a function runs as a numeric uid[:gid] (such as 1000:1000)"
        ))
    })
}

/// The whole runtime spec of one container.
pub(crate) fn runtime_spec(input: &SpecInput<'_>) -> Spec {
    let task = input.task;
    let tmp_size = task.tmp_size.max(MIN_TMP_SIZE);
    let mut mounts = vec![
        Mount::new("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        Mount::new(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        Mount::new(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        Mount::new(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        Mount::new(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        Mount::new(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        Mount::new(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        Mount {
            destination: "/tmp".to_owned(),
            kind: "tmpfs".to_owned(),
            source: "tmpfs".to_owned(),
            options: [
                "nosuid".to_owned(),
                "nodev".to_owned(),
                "noexec".to_owned(),
                "mode=1777".to_owned(),
                format!("size={tmp_size}"),
                format!("nr_inodes={}", tmp_size / TMP_BYTES_PER_INODE),
            ]
            .into(),
        },
    ];
    for (host, container) in &task.volumes {
        mounts.push(Mount::bind(
            &host.display().to_string(),
            &container.display().to_string(),
            &["rbind", "rprivate"],
        ));
    }
    let direct = input.direct;
    mounts.push(Mount::bind(
        &direct.init.display().to_string(),
        direct::INIT,
        &["rbind", "rprivate", "ro", "nosuid", "nodev"],
    ));
    mounts.push(Mount::bind(
        &direct.dir.path().display().to_string(),
        direct::IO,
        &["rbind", "rprivate", "nosuid", "nodev", "noexec"],
    ));

    let memory = i64::try_from(task.memory).unwrap_or(i64::MAX);
    let quota = u64::try_from(task.cpus.nano_cpus()).unwrap_or(0) * CPU_PERIOD / 1_000_000_000;
    let no_capabilities = Capabilities::default();
    Spec {
        oci_version: "1.0.2-dev",
        process: Process {
            terminal: false,
            user: User {
                uid: input.user.0,
                gid: input.user.1,
            },
            args: direct
                .entrypoint()
                .into_iter()
                .chain(direct.command.iter().cloned())
                .collect(),
            env: environment(&input.image.env, &task.env),
            cwd: task
                .workdir
                .clone()
                .or_else(|| input.image.workdir.clone())
                .unwrap_or_else(|| "/".to_owned()),
            capabilities: no_capabilities,
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE",
                hard: u64::try_from(input.nofile_limit).unwrap_or(0),
                soft: u64::try_from(input.nofile_limit).unwrap_or(0),
            }],
            no_new_privileges: true,
        },
        root: Root {
            path: "rootfs",
            readonly: task.read_only,
        },
        hostname: input.container_id.chars().take(HOSTNAME_MAX).collect(),
        mounts,
        annotations: BTreeMap::from([(
            SHIM_GROUP_ANNOTATION.to_owned(),
            input.shim_group.to_owned(),
        )]),
        linux: Linux {
            namespaces: ["pid", "ipc", "uts", "mount", "network", "cgroup"]
                .into_iter()
                .map(|kind| Namespace { kind })
                .collect(),
            cgroups_path: format!("{CGROUP_PARENT}/{}", input.container_id),
            resources: Resources {
                devices: vec![DeviceRule {
                    allow: false,
                    access: "rwm",
                }],
                memory: (memory > 0).then_some(Memory {
                    limit: memory,
                    // Memory plus swap, equal to memory: no swap at all.
                    swap: memory,
                }),
                cpu: (quota > 0).then_some(Cpu {
                    quota: i64::try_from(quota).unwrap_or(i64::MAX),
                    period: CPU_PERIOD,
                }),
                pids: Pids {
                    limit: input.pids_limit,
                },
            },
            masked_paths: MASKED_PATHS.to_vec(),
            readonly_paths: READONLY_PATHS.to_vec(),
            seccomp: super::seccomp::profile(),
        },
    }
}

/// The image's environment with the task's over it, and a `PATH` if neither
/// names one.
fn environment(image: &[String], task: &BTreeMap<String, String>) -> Vec<String> {
    let mut env: Vec<String> = image
        .iter()
        .filter(|pair| {
            let name = pair.split_once('=').map_or(pair.as_str(), |(name, _)| name);
            !task.contains_key(name)
        })
        .cloned()
        .chain(task.iter().map(|(name, value)| format!("{name}={value}")))
        .collect();
    if !env.iter().any(|pair| pair.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    env
}

/// An OCI runtime spec, as far as hotpool fills it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Spec {
    oci_version: &'static str,
    process: Process,
    root: Root,
    hostname: String,
    mounts: Vec<Mount>,
    annotations: BTreeMap<String, String>,
    linux: Linux,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    terminal: bool,
    user: User,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    capabilities: Capabilities,
    rlimits: Vec<Rlimit>,
    no_new_privileges: bool,
}

#[derive(Debug, Serialize)]
struct User {
    uid: u32,
    gid: u32,
}

/// Every capability set, all empty.
#[derive(Debug, Default, Serialize)]
struct Capabilities {
    bounding: Vec<String>,
    effective: Vec<String>,
    inheritable: Vec<String>,
    permitted: Vec<String>,
    ambient: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Rlimit {
    #[serde(rename = "type")]
    kind: &'static str,
    hard: u64,
    soft: u64,
}

#[derive(Debug, Serialize)]
struct Root {
    path: &'static str,
    readonly: bool,
}

#[derive(Debug, Serialize)]
struct Mount {
    destination: String,
    #[serde(rename = "type")]
    kind: String,
    source: String,
    options: Vec<String>,
}

impl Mount {
    fn new(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            destination: destination.to_owned(),
            kind: kind.to_owned(),
            source: source.to_owned(),
            options: options.iter().map(|option| (*option).to_owned()).collect(),
        }
    }

    fn bind(source: &str, destination: &str, options: &[&str]) -> Mount {
        Mount::new(destination, "bind", source, options)
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Linux {
    namespaces: Vec<Namespace>,
    cgroups_path: String,
    resources: Resources,
    masked_paths: Vec<&'static str>,
    readonly_paths: Vec<&'static str>,
    seccomp: &'static serde_json::Value,
}

#[derive(Debug, Serialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct Resources {
    devices: Vec<DeviceRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cpu>,
    pids: Pids,
}

#[derive(Debug, Serialize)]
struct DeviceRule {
    allow: bool,
    access: &'static str,
}

#[derive(Debug, Serialize)]
struct Memory {
    limit: i64,
    swap: i64,
}

#[derive(Debug, Serialize)]
struct Cpu {
    quota: i64,
    period: u64,
}

#[derive(Debug, Serialize)]
struct Pids {
    limit: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Cpus;
    use crate::driver::linux::direct::RuntimeDir;

    /// The spec of a task as the tests of the Docker driver make them, as JSON.
    fn spec_of(task: &Task) -> serde_json::Value {
        let root = tempfile::tempdir().unwrap();
        let runtime = RuntimeDir::install(root.path()).unwrap();
        let image = ImageConfig {
            top_snapshot: "sha256:top".into(),
            entrypoint: vec!["/fn".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "MODE=image".into()],
            workdir: None,
        };
        let direct =
            Direct::prepare(&runtime, task, image.entrypoint.clone(), image.cmd.clone()).unwrap();
        let spec = runtime_spec(&SpecInput {
            container_id: "hotpool-c1",
            task,
            image: &image,
            direct: &direct,
            user: numeric_user(&task.user).unwrap(),
            pids_limit: 256,
            nofile_limit: 1024,
            shim_group: "g1",
        });
        serde_json::to_value(&spec).unwrap()
    }

    #[test]
    fn the_process_is_contained() {
        let mut task = Task::new("t1", "f", "img");
        task.env.insert("MODE".into(), "task".into());
        let spec = spec_of(&task);
        let process = &spec["process"];
        assert_eq!(
            process["user"],
            serde_json::json!({"uid": 1000, "gid": 1000})
        );
        assert_eq!(process["noNewPrivileges"], true);
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(process["capabilities"][set], serde_json::json!([]), "{set}");
        }
        assert_eq!(
            process["args"],
            serde_json::json!(["/.hotpool/init", "/.hotpool/io", "/fn", "serve"])
        );
        assert_eq!(
            process["env"],
            serde_json::json!(["PATH=/bin", "MODE=task"]),
            "the task's variables win"
        );
        assert_eq!(
            process["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            spec["annotations"][SHIM_GROUP_ANNOTATION], "g1",
            "the container names its shim group"
        );
    }

    #[test]
    fn the_limits_are_set() {
        let mut task = Task::new("t1", "f", "img");
        task.memory = 64 << 20;
        task.cpus = "0.5".parse::<Cpus>().unwrap();
        let spec = spec_of(&task);
        let resources = &spec["linux"]["resources"];
        assert_eq!(resources["memory"]["limit"], 64 << 20);
        assert_eq!(resources["memory"]["swap"], 64 << 20, "no swap");
        assert_eq!(resources["cpu"]["quota"], 50_000);
        assert_eq!(resources["cpu"]["period"], 100_000);
        assert_eq!(resources["pids"]["limit"], 256);
        assert_eq!(spec["linux"]["cgroupsPath"], "/hotpool/hotpool-c1");
        let namespaces: Vec<&str> = spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(namespaces.contains(&"network"), "no network but loopback");
        assert!(namespaces.contains(&"pid"));
    }

    #[test]
    fn tmp_is_sized_and_the_direct_pipes_are_mounted() {
        let mut task = Task::new("t1", "f", "img");
        task.tmp_size = 0;
        let spec = spec_of(&task);
        let mounts = spec["mounts"].as_array().unwrap();
        let mount = |destination: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == destination)
                .unwrap_or_else(|| panic!("no mount at {destination}"))
        };
        let tmp: Vec<&str> = mount("/tmp")["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        for option in [
            "noexec",
            "nosuid",
            "nodev",
            "mode=1777",
            "size=1048576",
            "nr_inodes=64",
        ] {
            assert!(tmp.contains(&option), "{option} in {tmp:?}");
        }
        let init = mount("/.hotpool/init");
        assert_eq!(init["type"], "bind");
        assert!(init["options"].as_array().unwrap().contains(&"ro".into()));
        assert_eq!(mount("/sys")["options"][3], "ro");
        assert!(
            mount("/.hotpool/io")["source"]
                .as_str()
                .unwrap()
                .ends_with("/t1")
        );
    }

    #[test]
    fn names_are_refused_and_numbers_taken() {
        assert_eq!(numeric_user("1000:1000").unwrap(), (1000, 1000));
        assert_eq!(numeric_user("65534").unwrap(), (65534, 65534));
        let refused = numeric_user("nobody").unwrap_err().to_string();
        assert!(refused.contains("numeric uid[:gid]"), "{refused}");
    }
}
