//! The `direct` transport: a call's bytes go through named pipes in a directory
//! shared with the container, not through the engine.
//!
//! The first direct task (or `install_runtime`) installs `hotpool-init` (built
//! static from `src/init/main.rs` and embedded here) into the driver's runtime
//! directory. Each container of a direct task gets it bind-mounted read-only at
//! [`INIT`] as its command (on Docker under Docker's own init; on containerd it
//! is PID 1 itself, reaping orphans and passing on SIGTERM and SIGINT), and a
//! directory of its own bind-mounted at [`IO`] holding five pipes: `stdin`,
//! `stdout`, `stderr`, `status` and `owner`. The init opens them, says `ready`
//! on `status`, starts the function with the first three as its own, and
//! reports `exit CODE` or `signal N` on `status` the moment the function ends.
//! hotpool holds `owner` open for writing while it owns the container: a hot
//! container's init (given `--orphan-after`) keeps the function waiting while
//! no owner does, and ends it once none has for the task's orphan timeout.
//!
//! hotpool first opens its ends read-write, so neither side's open blocks and
//! no early end-of-file is seen; once the init is ready it reopens them
//! one-way (through `/proc/self/fd`, never by name again), so the end of the
//! container shows as end-of-file and a write to a dead function fails at
//! once. The function can open its own pipes but not replace them (the
//! directory is hotpool's), and the status pipe is never read past a short
//! line, whatever the function writes to it. The directory goes when the cookie is closed or
//! dropped. Each driver keeps its containers' directories under one of its own,
//! named after its process, removed when the driver goes; those of processes
//! that are gone (a crash) are removed when the next driver installs.

use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, BufReader};
use tokio::net::unix::pipe;

use super::call_mark::MappedWord;
use crate::driver::{AdoptRefusal, CallMark, Task};
use crate::error::CallError;

/// Where the init program appears inside a container.
pub(crate) const INIT: &str = "/.hotpool/init";
/// Where the container's pipe directory appears inside it.
pub(crate) const IO: &str = "/.hotpool/io";

/// `hotpool-init`, built static for this target by `build.rs`.
static INIT_PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hotpool-init"));

/// The pipes of a container the function may open, by name in its directory.
const PIPES: [&str; 4] = ["stdin", "stdout", "stderr", "status"];
/// The pipe hotpool holds while it owns the container: hotpool's, readable by
/// all (the init watches it), writable by hotpool alone.
const OWNER: &str = "owner";
/// The file of the container's [`CallMark`]: hotpool's alone.
const MARK: &str = "call";

/// Tells apart the drivers of one process.
static DRIVERS: AtomicU64 = AtomicU64::new(0);

/// A driver's runtime directory, installed when a direct task first needs it.
#[derive(Debug)]
pub(crate) struct LazyRuntimeDir {
    path: PathBuf,
    installed: tokio::sync::OnceCell<Result<RuntimeDir, String>>,
}

impl LazyRuntimeDir {
    /// The runtime directory at `path`, else at [`RuntimeDir::default_path`];
    /// nothing is made yet.
    pub(crate) fn new(path: Option<PathBuf>) -> LazyRuntimeDir {
        LazyRuntimeDir {
            path: path.unwrap_or_else(RuntimeDir::default_path),
            installed: tokio::sync::OnceCell::new(),
        }
    }

    /// Where it is (made or not): pool names are claimed under it too.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The runtime directory, installed on first use.
    pub(crate) async fn get(&self) -> Result<&RuntimeDir, CallError> {
        let installed = self
            .installed
            .get_or_init(|| async {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || RuntimeDir::install(&path))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|installed| installed.map_err(|e| e.to_string()))
            })
            .await;
        installed.as_ref().map_err(|e| {
            CallError::engine(format!(
                "cannot install hotpool-init for the direct transport: {e}"
            ))
        })
    }
}

/// What a container of a direct task needs: its pipes (hotpool's early ends
/// already open), the installed init, and the function's command.
pub(crate) struct Direct {
    pub(crate) dir: IoDir,
    pub(crate) early: Ends,
    pub(crate) init: PathBuf,
    pub(crate) command: Vec<String>,
    /// How long the function outlives its owner (hot containers only).
    orphan_after: Option<Duration>,
}

impl Direct {
    /// Makes the pipes of `task`'s container and its command: the image's
    /// `entrypoint`, then the task's command, else the image's `cmd`.
    pub(crate) fn prepare(
        runtime: &RuntimeDir,
        task: &Task,
        entrypoint: Vec<String>,
        cmd: Vec<String>,
    ) -> Result<Direct, CallError> {
        let command: Vec<String> = entrypoint
            .into_iter()
            .chain(if task.command.is_empty() {
                cmd
            } else {
                task.command.clone()
            })
            .collect();
        if command.is_empty() {
            return Err(CallError::engine(format!(
                "{} has no entrypoint or command, and the function names none",
                task.image
            )));
        }
        let io = |e: std::io::Error| {
            CallError::engine(format!("making the pipes of container {}: {e}", task.id))
        };
        let dir = runtime.container_dir(&task.id, &task.user).map_err(io)?;
        let early = dir.open_early().map_err(io)?;
        Ok(Direct {
            init: runtime.init(),
            dir,
            early,
            command,
            // A cold container's stdin must end, so the init holds no end of it.
            orphan_after: task.orphan_timeout.filter(|_| task.input.is_none()),
        })
    }

    /// The init and its arguments, as the container sees them; the function's
    /// command follows.
    pub(crate) fn entrypoint(&self) -> Vec<String> {
        let mut entrypoint = vec![INIT.to_owned()];
        if let Some(after) = self.orphan_after {
            // Whole seconds, at least one: a zero would end it at once.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            entrypoint.extend(["--orphan-after".to_owned(), seconds.max(1).to_string()]);
        }
        entrypoint.push(IO.to_owned());
        entrypoint
    }
}

/// The driver's runtime directory: the init program, shared, and this driver's
/// own directory (`PID.N`) holding one directory per container of a direct task.
#[derive(Debug)]
pub(crate) struct RuntimeDir {
    root: PathBuf,
    own: PathBuf,
    /// Held while this driver lives: its directory is not an orphan.
    _lock: File,
}

/// The file in a driver's directory that it holds locked while it lives.
const LOCK: &str = "lock";

impl RuntimeDir {
    /// The default place: `$XDG_RUNTIME_DIR/hotpool`, else `/run/hotpool` for
    /// root, else `hotpool-UID` in the temporary directory.
    pub(crate) fn default_path() -> PathBuf {
        if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
            return Path::new(&runtime).join("hotpool");
        }
        let uid = current_uid();
        if uid == 0 {
            PathBuf::from("/run/hotpool")
        } else {
            std::env::temp_dir().join(format!("hotpool-{uid}"))
        }
    }

    /// Creates `root` if need be, installs the init program in it, makes this
    /// driver's own directory, and removes those of processes that are gone.
    pub(crate) fn install(root: &Path) -> io::Result<RuntimeDir> {
        let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", root.display()));
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .map_err(with_path)?;
        let init = root.join("init");
        if fs::read(&init).ok().as_deref() != Some(INIT_PROGRAM) {
            // Written aside and renamed: a container starting now sees the old
            // program or the new one, never half of one.
            let partial = root.join(format!(
                "init.{}.{}",
                std::process::id(),
                DRIVERS.fetch_add(1, Ordering::Relaxed)
            ));
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o755)
                .open(&partial)
                .map_err(with_path)?;
            file.write_all(INIT_PROGRAM)?;
            file.sync_all()?;
            fs::rename(&partial, &init).map_err(with_path)?;
        }
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
        remove_orphans(root);
        let name = format!(
            "{}.{}",
            std::process::id(),
            DRIVERS.fetch_add(1, Ordering::Relaxed)
        );
        // Made under a hidden name with its lock held, then renamed, so no
        // other hotpool ever sees it unlocked. Others may pass through to a
        // container's directory, not list them.
        let hidden = root.join(format!(".{name}"));
        DirBuilder::new()
            .mode(0o711)
            .create(&hidden)
            .map_err(with_path)?;
        fs::set_permissions(&hidden, fs::Permissions::from_mode(0o711))?;
        let lock = File::create(hidden.join(LOCK))?;
        lock.lock()?;
        let own = root.join(name);
        fs::rename(&hidden, &own).map_err(with_path)?;
        Ok(RuntimeDir {
            root: root.to_owned(),
            own,
            _lock: lock,
        })
    }

    /// The installed init program.
    pub(crate) fn init(&self) -> PathBuf {
        self.root.join("init")
    }

    /// Makes the pipe directory of the container of task `id`. The directory
    /// stays hotpool's (the function can open its pipes, never replace them);
    /// the pipes are the user's that `user` names (`uid[:gid]`), or open to all
    /// where it is a name the host cannot resolve or hotpool may not give them
    /// away. Others cannot list the directories to find them.
    pub(crate) fn container_dir(&self, id: &str, user: &str) -> io::Result<IoDir> {
        let path = self.own.join(id);
        DirBuilder::new().mode(0o711).create(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o711))?;
        let mark = CallMark::mapped(MappedWord::create(&path.join(MARK))?);
        let dir = IoDir {
            path,
            owner: None,
            mark,
            released: false,
        };
        mkfifo(&dir.path.join(OWNER))?;
        fs::set_permissions(dir.path.join(OWNER), fs::Permissions::from_mode(0o644))?;
        let owner = numeric_user(user);
        for name in PIPES {
            let pipe = dir.path.join(name);
            mkfifo(&pipe)?;
            let given =
                owner.map(|(uid, gid)| std::os::unix::fs::chown(&pipe, Some(uid), Some(gid)));
            match given {
                Some(Ok(())) => {}
                // Not root (rootless Docker, a user in the docker group): the
                // pipes cannot be given away, so they are open to all.
                Some(Err(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                    fs::set_permissions(&pipe, fs::Permissions::from_mode(0o666))?
                }
                Some(Err(e)) => return Err(e),
                None => fs::set_permissions(&pipe, fs::Permissions::from_mode(0o666))?,
            }
        }
        Ok(dir)
    }
}

impl RuntimeDir {
    /// Takes over the pipe directory `from` of a running container that an
    /// earlier owner (a hotpool that is gone, or one that let it go) left
    /// between calls, and opens hotpool's ends of its pipes. The directory
    /// stays where it is, as the container's mount and labels name it, so a
    /// later owner can take it over again; it goes when the container does.
    /// It is refused, and the directory removed, unless it is a container's
    /// directory under this runtime directory whose mark says it is between
    /// calls, whose function still runs, and whose pipes hold no byte: none of
    /// a request unread, none written while idle, no verdict. A directory (or
    /// pipe) that is gone counts as an ended function: a driver removes one
    /// only once its function is gone (an owner that let it go does so as it
    /// exits, racing the next owner) or with its container.
    pub(crate) fn take_over(&self, from: &Path) -> Result<(IoDir, OneWay), TakeOverError> {
        let is_ours = from.file_name().is_some()
            && from.parent().and_then(Path::parent) == Some(self.root.as_path());
        if !is_ours {
            return Err(TakeOverError::NotOurs);
        }
        let path = from.to_owned();
        let mark = match MappedWord::open(&path.join(MARK)) {
            Ok(word) => CallMark::mapped(word),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(TakeOverError::Ended),
            Err(e) => {
                let _ = fs::remove_dir_all(&path);
                return Err(TakeOverError::Io(e));
            }
        };
        let mut dir = IoDir {
            path,
            owner: None,
            mark,
            released: false,
        };
        if !dir.mark.is_idle() {
            return Err(TakeOverError::InCall);
        }
        let fifo = |name: &str, write: bool| -> Result<File, TakeOverError> {
            let pipe = OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(dir.path.join(name))
                .map_err(|e| match e.raw_os_error() {
                    // No reader: the function (or its init) is gone; or
                    // its pipes are, removed as its function was found gone.
                    Some(libc::ENXIO | libc::ENOENT) => TakeOverError::Ended,
                    _ => TakeOverError::Io(e),
                })?;
            match pipe.metadata() {
                Ok(meta) if meta.file_type().is_fifo() => Ok(pipe),
                _ => Err(TakeOverError::NotOurs),
            }
        };
        let (stdin, stdout, stderr, status) = (
            fifo("stdin", true)?,
            fifo("stdout", false)?,
            fifo("stderr", false)?,
            fifo("status", false)?,
        );
        let owner = fifo(OWNER, true)?;
        for (pipe, unread) in [
            (&stdin, TakeOverError::RequestUnread),
            (&stdout, TakeOverError::WroteWhileIdle),
            (&status, TakeOverError::Ended),
        ] {
            if bytes_waiting(pipe).map_err(TakeOverError::Io)? > 0 {
                return Err(unread);
            }
        }
        let io = TakeOverError::Io;
        dir.own(owner.try_clone().map_err(io)?);
        let one_way = OneWay {
            stdin: Stdin(Some(pipe::Sender::from_file_unchecked(stdin).map_err(io)?)),
            stdout: pipe::Receiver::from_file_unchecked(stdout).map_err(io)?,
            stderr: pipe::Receiver::from_file_unchecked(stderr).map_err(io)?,
            status: BufReader::with_capacity(
                STATUS_LINE_MAX as usize,
                pipe::Receiver::from_file_unchecked(status).map_err(io)?,
            ),
            owner,
        };
        Ok((dir, one_way))
    }
}

/// Why a container's pipes were not taken over.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TakeOverError {
    #[error("its pipe directory is not one of this runtime directory's containers")]
    NotOurs,
    #[error("it was in a call (or its owner never marked it between calls)")]
    InCall,
    #[error("its function has ended")]
    Ended,
    #[error("part of a request is still unread on its stdin")]
    RequestUnread,
    #[error("it wrote to stdout while no call was in it")]
    WroteWhileIdle,
    #[error("{0}")]
    Io(io::Error),
}

impl TakeOverError {
    /// The refusal a pool counts it as.
    pub(crate) fn refusal(&self) -> AdoptRefusal {
        match self {
            TakeOverError::InCall | TakeOverError::RequestUnread => AdoptRefusal::InCall,
            TakeOverError::Ended => AdoptRefusal::Ended,
            TakeOverError::WroteWhileIdle => AdoptRefusal::WroteWhileIdle,
            TakeOverError::NotOurs | TakeOverError::Io(_) => AdoptRefusal::Unproven,
        }
    }
}

/// How many bytes the pipe `pipe` holds unread.
fn bytes_waiting(pipe: &File) -> io::Result<usize> {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    if unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut waiting) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(waiting).unwrap_or(0))
}

/// Makes a FIFO at `path`, for its maker alone.
fn mkfifo(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c_path` is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for RuntimeDir {
    /// Removes this driver's directory, but for the pipes of containers whose
    /// function still runs (let go for a next owner): those stay until taken
    /// over, or until the next driver to install finds them dead.
    fn drop(&mut self) {
        if remove_dead_containers(&self.own) == 0 {
            let _ = fs::remove_dir_all(&self.own);
        }
    }
}

/// Removes what drivers that are gone (no process holds their lock) left in
/// their directories (`PID.N`): the directory of each container whose function
/// is gone, and the driver's own once none is left. A container whose function
/// still runs keeps its pipes, for an owner to take over ([`RuntimeDir::take_over`]),
/// until it is removed and this runs again. A PID does not say whose a
/// directory is: a hotpool in a container of its own sees other PIDs than the
/// host's, and one of them must never take a live hotpool's pipes away. (A
/// directory without a lock, of an older hotpool, goes when its PID is gone.)
pub(crate) fn remove_orphans(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        remove_if_gone(&entry.path());
    }
}

/// Removes the dead containers' directories in `driver_dir` if it is the
/// directory of a driver that is gone, and the whole of it once none is left.
fn remove_if_gone(driver_dir: &Path) {
    let Some((pid, _)) = driver_dir
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.split_once('.'))
    else {
        return;
    };
    if !driver_dir.is_dir() || pid.parse::<u32>().is_err() {
        return;
    }
    let gone = match File::open(driver_dir.join(LOCK)) {
        Ok(lock) => lock.try_lock().is_ok(),
        Err(_) => !Path::new("/proc").join(pid).exists(),
    };
    if gone && remove_dead_containers(driver_dir) == 0 {
        let _ = fs::remove_dir_all(driver_dir);
    }
}

/// Removes the pipe directory `path` of a container that is gone, if it is
/// one of a container's directories under runtime directory `root`.
pub(crate) fn remove_left_dir(root: &Path, path: &Path) {
    let Some(driver_dir) = path.parent() else {
        return;
    };
    if driver_dir.parent() == Some(root) && path.file_name().is_some() {
        let _ = fs::remove_dir_all(path);
        remove_if_gone(driver_dir);
    }
}

/// Removes the directories in `driver_dir` of containers whose function is
/// gone; says how many are left.
fn remove_dead_containers(driver_dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(driver_dir) else {
        return 0;
    };
    let mut alive = 0;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        if has_reader(&entry.path().join("stdin")) {
            alive += 1;
        } else {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    alive
}

/// Whether some process holds the reading end of the pipe at `path`: a
/// writer's open that cannot block succeeds only then. The writer goes at
/// once; the function does not read end-of-file, as its init holds a writer
/// too while it waits for an owner.
fn has_reader(path: &Path) -> bool {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .is_ok_and(|pipe| pipe.metadata().is_ok_and(|m| m.file_type().is_fifo()))
}

/// One container's pipe directory, with hotpool's end of its owner pipe once
/// the container runs; removed, and the end closed, when dropped.
#[derive(Debug)]
pub(crate) struct IoDir {
    path: PathBuf,
    owner: Option<File>,
    mark: CallMark,
    /// Let go for a next owner: the directory stays when this drops.
    released: bool,
}

impl IoDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The container's between-calls mark.
    pub(crate) fn mark(&self) -> CallMark {
        self.mark.clone()
    }

    /// Holds `end`, the owner pipe's one-way end, for as long as this lives.
    pub(crate) fn own(&mut self, end: File) {
        self.owner = Some(end);
    }

    /// Lets go of the container for a next owner to take over
    /// ([`RuntimeDir::take_over`]): hotpool's end of the owner pipe closes,
    /// and the directory stays.
    pub(crate) fn release(mut self) {
        self.released = true;
    }

    /// hotpool's ends, opened read-write so that nothing blocks or ends before
    /// the init has opened its own.
    pub(crate) fn open_early(&self) -> io::Result<Ends> {
        let open = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(self.path.join(name))
        };
        Ok(Ends {
            held: [open("stdin")?, open("stdout")?, open("stderr")?],
            status: open("status")?,
            owner: open(OWNER)?,
        })
    }
}

impl Drop for IoDir {
    /// Removes the directory unless it was let go, and with it the directory
    /// of a driver that is gone once this was the last it held (one taken
    /// over from it).
    fn drop(&mut self) {
        if !self.released {
            let _ = fs::remove_dir_all(&self.path);
            if let Some(driver_dir) = self.path.parent() {
                remove_if_gone(driver_dir);
            }
        }
    }
}

/// hotpool's first, read-write ends of a container's pipes: stdin, stdout,
/// stderr and owner held open until [`Ends::one_way`], and status, read for
/// `ready`.
pub(crate) struct Ends {
    held: [File; 3],
    status: File,
    owner: File,
}

impl Ends {
    /// Waits for the init to say `ready` on its status pipe.
    /// Reads exactly those bytes: the verdict may follow at once (a function
    /// that exits right away), and it must stay in the pipe for
    /// [`verdict`].
    pub(crate) async fn ready(&self) -> io::Result<()> {
        let mut status = pipe::Receiver::from_file_unchecked(self.status.try_clone()?)?;
        let mut said = [0u8; READY.len()];
        status.read_exact(&mut said).await?;
        if said == *READY {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "hotpool-init said {:?}, not ready",
                String::from_utf8_lossy(&said)
            )))
        }
    }

    /// hotpool's ends, one-way, once the init holds its own. They are opened
    /// anew from the pipes these ends hold, not by name: nothing in the
    /// directory is looked up again.
    pub(crate) fn one_way(&self) -> io::Result<OneWay> {
        let [stdin, stdout, stderr] = &self.held;
        let again = |file: &File| Path::new("/proc/self/fd").join(file.as_raw_fd().to_string());
        let receiver = |file: &File| pipe::OpenOptions::new().open_receiver(again(file));
        Ok(OneWay {
            stdin: Stdin(Some(pipe::OpenOptions::new().open_sender(again(stdin))?)),
            stdout: receiver(stdout)?,
            stderr: receiver(stderr)?,
            status: BufReader::with_capacity(STATUS_LINE_MAX as usize, receiver(&self.status)?),
            // Opened after the init's own end: it sees this writer go.
            owner: OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(again(&self.owner))?,
        })
    }
}

/// What the init says on the status pipe once its pipes are open.
const READY: &[u8; 6] = b"ready\n";

/// The longest line the status pipe may carry; the function can write to it
/// too, so no more is ever read.
const STATUS_LINE_MAX: u64 = 64;

/// One line of the status pipe, without its newline, read no further than
/// [`STATUS_LINE_MAX`] bytes.
async fn read_status_line(status: &mut BufReader<pipe::Receiver>) -> io::Result<String> {
    let mut line = Vec::new();
    (&mut *status)
        .take(STATUS_LINE_MAX)
        .read_until(b'\n', &mut line)
        .await?;
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// hotpool's one-way ends of a container's pipes.
pub(crate) struct OneWay {
    pub(crate) stdin: Stdin,
    pub(crate) stdout: pipe::Receiver,
    pub(crate) stderr: pipe::Receiver,
    pub(crate) status: BufReader<pipe::Receiver>,
    /// Held by the container's [`IoDir`] while hotpool owns the container.
    pub(crate) owner: File,
}

/// The writing end of a container's stdin. Shutting it down closes it, so the
/// function reads end-of-file, as with the engine's attach stream.
pub(crate) struct Stdin(Option<pipe::Sender>);

impl AsyncWrite for Stdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.as_mut() {
            Some(sender) => Pin::new(sender).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.as_mut() {
            Some(sender) => Pin::new(sender).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0 = None;
        Poll::Ready(Ok(()))
    }
}

/// How the function ended, as the init reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Exit(i64),
    Signal(i64),
}

impl Ended {
    /// The exit code the engine would report: 128 + the signal for a signal.
    pub(crate) fn code(self) -> i64 {
        match self {
            Ended::Exit(code) => code,
            Ended::Signal(signal) => 128 + signal,
        }
    }
}

/// Reads the init's verdict; `None` if the pipe ended without one (the
/// container went down whole: killed, or its init died).
pub(crate) async fn verdict(status: &mut BufReader<pipe::Receiver>) -> Option<Ended> {
    parse_verdict(&read_status_line(status).await.ok()?)
}

fn parse_verdict(line: &str) -> Option<Ended> {
    let (how, value) = line.split_once(' ')?;
    let value = value.parse().ok()?;
    match how {
        "exit" => Some(Ended::Exit(value)),
        "signal" => Some(Ended::Signal(value)),
        _ => None,
    }
}

/// `uid[:gid]` as numbers (the gid defaults to the uid); `None` for a name.
pub(crate) fn numeric_user(user: &str) -> Option<(u32, u32)> {
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn verdicts_parse_and_signals_map_to_the_engines_exit_codes() {
        assert_eq!(parse_verdict("exit 3"), Some(Ended::Exit(3)));
        assert_eq!(parse_verdict("signal 9"), Some(Ended::Signal(9)));
        assert_eq!(Ended::Signal(9).code(), 137);
        assert_eq!(parse_verdict("ready\n"), None);
        assert_eq!(parse_verdict(""), None);
    }

    #[tokio::test]
    async fn a_verdict_right_behind_ready_is_kept_for_the_wait() {
        let root = tempfile::tempdir().unwrap();
        let runtime = RuntimeDir::install(root.path()).unwrap();
        let dir = runtime.container_dir("quick", "nobody").unwrap();
        let early = dir.open_early().unwrap();
        // The init's side: ready, and the function already gone.
        let mut init = OpenOptions::new()
            .write(true)
            .open(dir.path().join("status"))
            .unwrap();
        init.write_all(b"ready\nexit 3\n").unwrap();
        early.ready().await.unwrap();
        let mut one_way = early.one_way().unwrap();
        drop(early);
        // A verdict lost with the ready line would leave this waiting for good.
        let heard = tokio::time::timeout(Duration::from_secs(10), verdict(&mut one_way.status));
        assert_eq!(heard.await.ok().flatten(), Some(Ended::Exit(3)));
    }

    /// hotpool's side of a container's pipes, as a test holds them, and the
    /// runtime directory they are in.
    struct HotpoolSide {
        _root: tempfile::TempDir,
        _runtime: RuntimeDir,
        dir: IoDir,
        stdin: Stdin,
        stdout: pipe::Receiver,
        status: BufReader<pipe::Receiver>,
    }

    /// Spawns `command`, whose program was just written. Another test's
    /// thread may fork while the program's file is still open for writing,
    /// and its child holds that file open until it execs: until then the
    /// kernel refuses to run the program ("text file busy"). Tried again for
    /// a while, as the child soon execs.
    fn spawn_written(command: &mut std::process::Command) -> std::process::Child {
        let mut tries = 0;
        loop {
            match command.spawn() {
                Err(error)
                    if error.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                spawned => return spawned.unwrap(),
            }
        }
    }

    /// Installs the init in a runtime directory of its own and starts it on
    /// the host, as a container would run it, with the entrypoint of a task
    /// with `orphan_timeout` (a cold one's if `cold`: its input given), the
    /// pipe directory's path in place of [`IO`], and `command`; takes
    /// hotpool's one-way ends and holds the owner pipe, as a driver does.
    async fn run_init(
        orphan_timeout: Duration,
        cold: bool,
        command: &[&str],
    ) -> (std::process::Child, HotpoolSide) {
        let root = tempfile::tempdir().unwrap();
        let runtime = RuntimeDir::install(root.path()).unwrap();
        let mut task = Task::new("init-test", "f", "image");
        task.orphan_timeout = Some(orphan_timeout);
        if cold {
            task.input = Some(Box::new(std::io::Cursor::new(Vec::new())));
        }
        let command = command.iter().map(|arg| arg.to_string()).collect();
        let direct = Direct::prepare(&runtime, &task, Vec::new(), command).unwrap();
        let entrypoint = direct.entrypoint();
        let Direct {
            mut dir,
            early,
            init,
            command,
            ..
        } = direct;
        let args = entrypoint[1..]
            .iter()
            .map(|arg| match arg.as_str() {
                IO => dir.path().display().to_string(),
                arg => arg.to_owned(),
            })
            .chain(command);
        let child = spawn_written(std::process::Command::new(&init).args(args));
        tokio::time::timeout(Duration::from_secs(30), early.ready())
            .await
            .expect("the init says ready")
            .unwrap();
        let one_way = early.one_way().unwrap();
        drop(early);
        dir.own(one_way.owner);
        let side = HotpoolSide {
            _root: root,
            _runtime: runtime,
            dir,
            stdin: one_way.stdin,
            stdout: one_way.stdout,
            status: one_way.status,
        };
        (child, side)
    }

    /// The init's verdict, within a deadline that is no test of speed.
    async fn verdict_of(status: &mut BufReader<pipe::Receiver>) -> Option<Ended> {
        tokio::time::timeout(Duration::from_secs(60), verdict(status))
            .await
            .expect("a verdict within a minute")
    }

    #[tokio::test]
    async fn a_hot_function_outlives_its_owner_until_the_orphan_timeout_then_is_killed() {
        // `cat` ends at end-of-file: an init that let its stdin end would
        // report `exit 0`.
        let (mut child, mut side) = run_init(Duration::from_millis(1500), false, &["cat"]).await;
        tokio::io::AsyncWriteExt::write_all(&mut side.stdin, b"warm\n")
            .await
            .unwrap();
        let mut answer = [0u8; 5];
        side.stdout.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"warm\n", "served while owned");
        // The owner goes, as a hotpool killed outright would: every end but
        // the status pipe, read here for the verdict.
        drop((side.stdin, side.stdout, side.dir));
        assert_eq!(
            verdict_of(&mut side.status).await,
            Some(Ended::Signal(9)),
            "killed once it had no owner for its orphan timeout, not ended by end-of-file"
        );
        assert_eq!(child.wait().unwrap().code(), Some(137));
    }

    #[tokio::test]
    async fn an_orphaned_function_writing_is_not_killed_by_its_owners_absence() {
        // `yes` writes without end: with no reader of stdout left it would
        // die of SIGPIPE (signal 13) at once.
        let (mut child, mut side) = run_init(Duration::from_secs(2), false, &["yes"]).await;
        let mut line = [0u8; 2];
        side.stdout.read_exact(&mut line).await.unwrap();
        drop((side.stdin, side.stdout, side.dir));
        assert_eq!(verdict_of(&mut side.status).await, Some(Ended::Signal(9)));
        assert_eq!(child.wait().unwrap().code(), Some(137));
    }

    #[tokio::test]
    async fn a_container_let_go_between_calls_is_taken_over_and_one_in_a_call_is_not() {
        let (mut child, side) = run_init(Duration::from_secs(600), false, &["cat"]).await;
        let HotpoolSide {
            _root: root,
            _runtime: runtime,
            dir,
            mut stdin,
            mut stdout,
            status,
        } = side;
        let mut answer = [0u8; 4];
        tokio::io::AsyncWriteExt::write_all(&mut stdin, b"one\n")
            .await
            .unwrap();
        stdout.read_exact(&mut answer).await.unwrap();
        dir.mark().idle();
        let path = dir.path().to_owned();
        // The first owner lets go and its driver goes: the live container's
        // pipes stay.
        drop((stdin, stdout, status));
        dir.release();
        drop(runtime);
        assert!(
            path.exists(),
            "a live container's pipes outlive their driver"
        );

        let next = RuntimeDir::install(root.path()).unwrap();
        let (dir, mut one_way) = next.take_over(&path).expect("taken over");
        tokio::io::AsyncWriteExt::write_all(&mut one_way.stdin, b"two\n")
            .await
            .unwrap();
        one_way.stdout.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"two\n", "the same function serves the next owner");

        // Let go in the middle of a call: refused, and its pipes removed.
        dir.mark().busy();
        let path = dir.path().to_owned();
        drop(one_way);
        dir.release();
        let third = RuntimeDir::install(root.path()).unwrap();
        let refused = third.take_over(&path).map(drop);
        assert!(matches!(refused, Err(TakeOverError::InCall)), "{refused:?}");
        assert!(!path.exists(), "a refused container's pipes are removed");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_container_whose_function_ended_once_let_go_is_refused_as_ended() {
        // A function that ends after one answer.
        let (mut child, side) =
            run_init(Duration::from_secs(600), false, &["head", "-n", "1"]).await;
        let HotpoolSide {
            _root: root,
            _runtime: runtime,
            dir,
            mut stdin,
            mut stdout,
            status,
        } = side;
        tokio::io::AsyncWriteExt::write_all(&mut stdin, b"one\n")
            .await
            .unwrap();
        stdout.read_exact(&mut [0u8; 4]).await.unwrap();
        dir.mark().idle();
        let path = dir.path().to_owned();
        drop((stdin, stdout, status));
        dir.release();
        // It ends before its driver goes, which then removes its pipes.
        child.wait().unwrap();
        drop(runtime);
        assert!(
            !path.exists(),
            "a dead container's pipes go with its driver"
        );

        let next = RuntimeDir::install(root.path()).unwrap();
        let refused = next.take_over(&path).map(drop);
        assert!(matches!(refused, Err(TakeOverError::Ended)), "{refused:?}");
    }

    #[tokio::test]
    async fn an_orphaned_function_writing_to_stderr_is_not_killed_by_its_owners_absence() {
        // Nothing reads stderr here once the owner goes: without the init's
        // own reader, `yes` would die of SIGPIPE (signal 13) at once.
        let command = ["sh", "-c", "exec yes >&2"];
        let (mut child, mut side) = run_init(Duration::from_secs(2), false, &command).await;
        drop((side.stdin, side.stdout, side.dir));
        assert_eq!(verdict_of(&mut side.status).await, Some(Ended::Signal(9)));
        assert_eq!(child.wait().unwrap().code(), Some(137));
    }

    #[tokio::test]
    async fn a_cold_function_still_reads_end_of_file_when_its_input_ends() {
        let (mut child, mut side) = run_init(Duration::from_secs(3600), true, &["cat"]).await;
        drop(side.stdin);
        assert_eq!(verdict_of(&mut side.status).await, Some(Ended::Exit(0)));
        assert_eq!(child.wait().unwrap().code(), Some(0));
    }

    #[test]
    fn the_orphan_timeout_is_given_to_hot_containers_in_whole_seconds() {
        let root = tempfile::tempdir().unwrap();
        let runtime = RuntimeDir::install(root.path()).unwrap();
        let entrypoint = |orphan: Option<Duration>, cold: bool| {
            let mut task = Task::new(
                format!("t{}", DRIVERS.fetch_add(1, Ordering::Relaxed)),
                "f",
                "i",
            );
            task.orphan_timeout = orphan;
            if cold {
                task.input = Some(Box::new(std::io::Cursor::new(Vec::new())));
            }
            Direct::prepare(&runtime, &task, Vec::new(), vec!["f".into()])
                .unwrap()
                .entrypoint()
        };
        assert_eq!(entrypoint(None, false), [INIT, IO]);
        assert_eq!(
            entrypoint(Some(Duration::from_millis(1500)), false),
            [INIT, "--orphan-after", "2", IO]
        );
        assert_eq!(
            entrypoint(Some(Duration::from_millis(1)), false),
            [INIT, "--orphan-after", "1", IO]
        );
        assert_eq!(entrypoint(Some(Duration::from_secs(600)), true), [INIT, IO]);
    }

    #[test]
    fn the_owner_pipe_is_hotpools_and_only_readable_by_others() {
        let root = tempfile::tempdir().unwrap();
        let runtime = RuntimeDir::install(root.path()).unwrap();
        let dir = runtime.container_dir("owned", "1000:1000").unwrap();
        let owner = fs::metadata(dir.path().join(OWNER)).unwrap();
        assert_eq!(owner.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&owner), current_uid());
    }

    #[test]
    fn users_are_numeric_or_named() {
        assert_eq!(numeric_user("1000:1000"), Some((1000, 1000)));
        assert_eq!(numeric_user("1000"), Some((1000, 1000)));
        assert_eq!(numeric_user("nobody"), None);
    }

    #[test]
    fn install_puts_the_init_in_place_and_clears_what_dead_drivers_left() {
        let root = tempfile::tempdir().unwrap();
        // A driver of a process that is gone (no pid is this large) left a container.
        let orphan = root.path().join(format!("{}.0", u32::MAX));
        fs::create_dir_all(orphan.join("c0")).unwrap();
        let first = RuntimeDir::install(root.path()).unwrap();
        assert_eq!(fs::read(first.init()).unwrap(), INIT_PROGRAM);
        assert!(!orphan.exists(), "a dead process's directory goes");
        let running = first.container_dir("c1", "1000").unwrap();
        let second = RuntimeDir::install(root.path()).unwrap();
        assert!(running.path().exists(), "a live driver's containers stay");
        let dir = second.container_dir("c2", "nobody").unwrap();
        let path = dir.path().to_owned();
        for name in PIPES {
            assert!(path.join(name).exists(), "{name}");
        }
        drop(dir);
        assert!(!path.exists(), "removed when dropped");
        let own = first.own.clone();
        drop(running);
        drop(first);
        assert!(!own.exists(), "a driver's directory goes with it");
    }

    #[test]
    fn a_locked_directory_stays_whatever_its_pid_says() {
        let root = tempfile::tempdir().unwrap();
        // Two drivers of PIDs this process cannot see (no pid is this large),
        // as a hotpool in a container of its own would have: one alive, its
        // lock held, one gone, its lock free.
        let dir_with_lock = |n: u32| {
            let dir = root.path().join(format!("{}.{n}", u32::MAX));
            fs::create_dir_all(dir.join("c0")).unwrap();
            (dir.clone(), File::create(dir.join(LOCK)).unwrap())
        };
        let (alive, held) = dir_with_lock(1);
        held.lock().unwrap();
        let (gone, _free) = dir_with_lock(2);
        let _driver = RuntimeDir::install(root.path()).unwrap();
        assert!(alive.join("c0").exists(), "a live driver's pipes stay");
        assert!(!gone.exists(), "a gone driver's directory goes");
    }
}
