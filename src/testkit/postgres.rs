//! A throwaway PostgreSQL server for tests and benchmarks: `initdb` into a
//! temporary folder, `pg_ctl start` on a free port of 127.0.0.1 with its
//! Unix sockets in that folder, one server per process, a fresh database
//! per test.
//!
//! The server is stopped by its pid when the process exits (an `atexit`
//! handler: the test harness exits through `exit`, also after a failed
//! test), and a watchdog process stops it when the process dies without
//! running its exit handlers (killed): it waits for end of file on a pipe
//! only this process holds open, which the kernel closes on any death.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The PostgreSQL server of this process.
#[derive(Debug)]
pub struct TestPostgres {
    /// The temporary folder: `data/` (the cluster), the sockets, `log`.
    base: PathBuf,
    bin: PathBuf,
    port: u16,
    pid: i32,
    /// The watchdog's stdin, open for the life of the process.
    watchdog: Mutex<Option<ChildStdin>>,
}

static SERVER: OnceLock<Result<TestPostgres, String>> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// The server of this process, started on first use.
pub fn server() -> Result<&'static TestPostgres, String> {
    SERVER
        .get_or_init(TestPostgres::start)
        .as_ref()
        .map_err(Clone::clone)
}

/// A new, empty database on this process's server: its `postgres://` URL.
pub fn fresh_database() -> Result<String, String> {
    server()?.create_database()
}

/// The folder of PostgreSQL's server programs: `CONVOY_PG_BIN`, else the
/// newest `/usr/lib/postgresql/N/bin` (where Debian puts them) that has
/// `initdb`.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CONVOY_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("no PostgreSQL in /usr/lib/postgresql ({e}); run scripts/install-deps.sh")
        })?
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no initdb under /usr/lib/postgresql/*/bin; run scripts/install-deps.sh".into()
    })
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// Runs a PostgreSQL program as the user that owns the cluster:
/// PostgreSQL refuses to run as root, so as root that is `postgres`.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Server settings for durability. Tests do not measure it: no fsync, so
/// a test's commits cost what the SQL costs. Benchmarks set
/// `CONVOY_PG_DURABLE=1` to measure PostgreSQL as an operator runs it
/// (fsync and synchronous commit on, its defaults).
fn durability() -> &'static str {
    if std::env::var("CONVOY_PG_DURABLE").is_ok_and(|v| v == "1") {
        ""
    } else {
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// The server's pid, from the first line of `postmaster.pid`.
fn read_pid(data: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

impl TestPostgres {
    fn start() -> Result<TestPostgres, String> {
        let bin = bin_dir()?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let base = std::env::temp_dir().join(format!("convoy-pg-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        if is_root() {
            let owner = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or("running as root needs a `postgres` user to run PostgreSQL")?;
            let path = std::ffi::CString::new(base.as_os_str().as_encoded_bytes())
                .map_err(|e| e.to_string())?;
            // SAFETY: a valid NUL-terminated path; -1 keeps the group.
            if unsafe { libc::chown(path.as_ptr(), owner, u32::MAX) } != 0 {
                return Err(format!(
                    "chown {}: {}",
                    base.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        let data = base.join("data");
        let mut initdb = as_owner(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(&base);
        if let Err(e) = run(initdb, "initdb") {
            let _ = std::fs::remove_dir_all(&base);
            return Err(e);
        }
        // A port taken between finding it and the server binding it: try
        // another.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let mut pg_ctl = as_owner(&bin.join("pg_ctl"));
            pg_ctl
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(base.join("log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-k {} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=400 {}",
                    base.display(),
                    durability()
                ))
                .arg("start")
                .current_dir(&base);
            match run(pg_ctl, "pg_ctl start") {
                Ok(()) => {
                    let pid = read_pid(&data).ok_or("pg_ctl started no server")?;
                    let server = TestPostgres {
                        watchdog: Mutex::new(None),
                        base,
                        bin,
                        port,
                        pid,
                    }
                    .guarded();
                    return Ok(server);
                }
                Err(e) => {
                    let log = std::fs::read_to_string(base.join("log")).unwrap_or_default();
                    last = format!("{e}\n{log}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&base);
        Err(last)
    }

    /// Registers the two ways the server is stopped (see the module notes).
    fn guarded(self) -> TestPostgres {
        extern "C" fn at_exit() {
            if let Some(Ok(server)) = SERVER.get() {
                server.stop();
            }
        }
        // SAFETY: registers a plain function; it only sends signals and
        // removes files.
        unsafe {
            libc::atexit(at_exit);
        }
        let script = format!(
            "read _; if p=$(head -n 1 '{data}/postmaster.pid' 2>/dev/null); then \
             kill -INT \"$p\"; while kill -0 \"$p\" 2>/dev/null; do sleep 0.2; done; fi; \
             rm -rf '{base}'",
            data = self.base.join("data").display(),
            base = self.base.display(),
        );
        let stdin = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
            .and_then(|mut child| child.stdin.take());
        if let Ok(mut slot) = self.watchdog.lock() {
            *slot = stdin;
        }
        self
    }

    /// `postgres://` URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The folder of the cluster, its sockets and its log; removed when
    /// the server stops.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Creates an empty database; its URL.
    pub fn create_database(&self) -> Result<String, String> {
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let mut createdb = Command::new(self.bin.join("createdb"));
        createdb
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(&name);
        run(createdb, "createdb")?;
        Ok(self.url(&name))
    }

    /// Stops the server (fast shutdown) and waits for it to be gone, then
    /// removes its folder.
    pub fn stop(&self) {
        if alive(self.pid) {
            // SAFETY: signals the server process this harness started.
            unsafe {
                libc::kill(self.pid, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(self.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(self.pid) {
                // SAFETY: as above; its backends exit when it is gone.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
        // End of file for the watchdog: it finds no server and exits.
        if let Ok(mut slot) = self.watchdog.lock() {
            slot.take();
        }
    }
}

/// A [`PostgresStore`](crate::store::PostgresStore) on a fresh database of
/// this process's server, migrated.
pub async fn fresh_store() -> Result<crate::store::PostgresStore, String> {
    let url = tokio::task::spawn_blocking(fresh_database)
        .await
        .map_err(|e| e.to_string())??;
    crate::store::PostgresStore::open(&url)
        .await
        .map_err(|e| e.to_string())
}
