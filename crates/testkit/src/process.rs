//! Paths of the built binaries, free ports, random secrets, temporary directories and child
//! processes that are killed on drop.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::poll;

// ── paths ────────────────────────────────────────────────────────────────────────────────────

/// The project root (the workspace this crate sits in, two levels up).
pub fn project_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

fn binary(var: &str, default: &str, make: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join(default));
    let path = if path.is_absolute() {
        path
    } else {
        project_root().join(path)
    };
    assert!(
        path.is_file(),
        "{var}: {} does not exist. Build it with `{make}` (or run everything with `make test`).",
        path.display()
    );
    path
}

/// The filter (`KEYGATE_WASM`).
pub fn wasm_path() -> PathBuf {
    binary(
        "KEYGATE_WASM",
        "target/wasm32-wasip1/release/keygate.wasm",
        "make wasm",
    )
}

/// The key service + CLI (`KEYGATE_BIN`).
pub fn keygate_bin() -> PathBuf {
    binary("KEYGATE_BIN", "target/release/keygate", "make build")
}

/// Envoy (`ENVOY_BIN`).
pub fn envoy_bin() -> PathBuf {
    binary("ENVOY_BIN", ".venv/bin/envoy", "make envoy")
}

// ── small utilities ──────────────────────────────────────────────────────────────────────────

/// A loopback port nobody listens on right now (and that this process never handed out).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding 127.0.0.1:0")
            .port();
        if given.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

/// `bytes` random bytes from the OS, hex encoded.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory under the system temp dir, removed on drop unless the test failed.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "keygate-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&path).expect("creating the temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept {} for debugging)", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `command` with stdout and stderr appended to `log` (a restarted process keeps the
    /// log of its previous life).
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning a log file handle");
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// The process id while the process runs (for `/proc/<pid>/stat` readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Panics (with the log tail) if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} exited during startup with {status}; last log lines ({}):\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 40)
                );
            }
        }
    }

    /// Polls `ready` until it holds, for at most `timeout`; panics with the log tail when the
    /// process exits first or the time is up.
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let ok = poll::wait_until(timeout, || {
            self.assert_alive();
            ready()
        });
        assert!(
            ok,
            "{} not ready: {what}; log:\n{}",
            self.name,
            tail(&self.log, 40)
        );
    }

    /// Its process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM, as an orchestrator stopping the service does.
    pub fn terminate(&mut self) {
        let pid = self.id().expect("the process is running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        poll::poll(timeout, Duration::from_millis(20), || {
            child.try_wait().ok().flatten()
        })
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a file (lossy UTF-8).
pub fn tail(path: &Path, lines: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The project's Python (`.venv/bin/python`, or `KEYGATE_PYTHON`), checked to import `module`
/// (`make prereqs` installs what the tests use into `.venv/`). Panics, naming the fix, when
/// it cannot.
pub fn python_with(module: &str) -> PathBuf {
    let python = std::env::var_os("KEYGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        ok,
        "{} cannot `import {module}`: run `make prereqs` (it installs the tests' Python \
         packages into .venv/), or point KEYGATE_PYTHON at a Python that has it",
        python.display()
    );
    python
}
