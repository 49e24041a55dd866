//! Notices commits to a SQLite file by any process, fast.
//!
//! inotify watches the file's directory rather than the file: a commit in WAL mode is an append
//! to `<db>-wal`, which SQLite creates and removes as connections come and go, and a file
//! replaced by a rename keeps its name but not its inode; a watch on the directory sees all of
//! that, a watch on a file would follow the old inode (and the state source must then refuse
//! the file: see [`StateError::Replaced`]). `-shm` is ignored: readers write their read marks
//! into it, so watching it could make every snapshot look like a change (and the wal-index is
//! written through `mmap`, which inotify does not report anyway).
//!
//! An event is only a hint. After a short debounce the watcher asks SQLite whether anything was
//! committed (`PRAGMA data_version` on its own connection, which changes with every commit by
//! any other connection) and whether the path names another file now. A write's last `write(2)`
//! to the WAL can be seen well before its commit is published in the wal-index (after the
//! WAL's fsync, with `synchronous=FULL`), so an event that finds nothing is followed by quick
//! re-checks for a while. A poll every 250 ms covers events that never come (inotify limits,
//! network file systems).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use notify::{
    event::{AccessKind, AccessMode},
    EventKind, RecursiveMode, Watcher as _,
};
use rusqlite::{Connection, OpenFlags};
use tokio::{sync::Notify, time::Instant};
use tracing::{debug, warn};

use super::{
    sqlite::open::{file_id, FileId},
    ChangeFuture, Changes, StateError,
};

/// Events of one write come in a burst of a few `write(2)`s within microseconds.
const DEBOUNCE: Duration = Duration::from_millis(2);
/// After an event that found no commit yet: re-check this often, for this long. A writer with
/// `synchronous=FULL` (the `sqlite3` tool's default) publishes its commit only after the WAL's
/// fsync, which can take tens of milliseconds, and nothing signals its end to inotify.
const RECHECK_EVERY: Duration = Duration::from_millis(4);
const RECHECK_FOR: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(250);

/// What the file's modification times say, for when SQLite cannot be asked.
type Stamps = [Option<(SystemTime, u64)>; 2];

/// How the changes a [`Watcher`] reported were noticed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WatchStats {
    /// By the check right after an inotify event.
    pub by_event: u64,
    /// By a re-check shortly after an event that had found nothing yet.
    pub by_recheck: u64,
    /// By the poll: inotify missed it or is unavailable.
    pub by_poll: u64,
}

/// Watches one SQLite file for commits by any connection of any process.
pub struct Watcher {
    path: PathBuf,
    events: Arc<Notify>,
    /// Kept for its `Drop`, which stops the inotify thread. `None` when inotify is unavailable.
    inotify: Option<notify::RecommendedWatcher>,
    conn: Option<Connection>,
    file: Option<FileId>,
    version: Option<i64>,
    stamps: Stamps,
    next_poll: Instant,
    /// Until when to re-check after an event that found no commit yet.
    recheck_until: Option<Instant>,
    stats: WatchStats,
}

fn stamps(path: &Path) -> Stamps {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [stamp(path), stamp(&sibling(path, "-wal"))]
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn open_probe(path: &Path) -> Option<Connection> {
    // Read-write without CREATE: never creates the file, and can open a WAL file whose -shm
    // does not exist yet. It only ever runs `PRAGMA data_version`.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    // Never wait for a lock inside the async runtime: a busy database falls back to the
    // file times.
    conn.busy_timeout(Duration::ZERO).ok()?;
    Some(conn)
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "data_version", |row| row.get(0))
}

/// The directories to watch and the file names in them that matter: those of the path, and
/// those of its target when it is a symbolic link.
fn watch_targets(path: &Path) -> Vec<(PathBuf, Vec<OsString>)> {
    let mut out: Vec<(PathBuf, Vec<OsString>)> = Vec::new();
    let mut add = |p: &Path| {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_owned()
        };
        let names = ["", "-wal", "-journal"]
            .iter()
            .map(|suffix| {
                let mut n = name.to_owned();
                n.push(suffix);
                n
            })
            .collect::<Vec<_>>();
        match out.iter_mut().find(|(d, _)| *d == dir) {
            Some((_, existing)) => existing.extend(names),
            None => out.push((dir, names)),
        }
    };
    add(path);
    if let Ok(target) = std::fs::canonicalize(path) {
        if target != path {
            add(&target);
        }
    }
    out
}

fn start_inotify(
    path: &Path,
    events: &Arc<Notify>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let targets = watch_targets(path);
    let names: Vec<OsString> = targets.iter().flat_map(|(_, n)| n.clone()).collect();
    let notify = Arc::clone(events);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            // A lost event (queue overflow) must not be a lost change.
            Err(_) => true,
            Ok(event) if event.need_rescan() => true,
            // Opens and closes by readers are not writes; closing a file written to is the
            // last event of a writer that exits, after its commit is published.
            Ok(event)
                if matches!(event.kind, EventKind::Access(_))
                    && event.kind != EventKind::Access(AccessKind::Close(AccessMode::Write)) =>
            {
                false
            }
            Ok(event) => event
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n))),
        };
        if relevant {
            notify.notify_one();
        }
    })?;
    for (dir, _) in &targets {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

impl Watcher {
    /// Starts watching `path`. The file need not exist yet, but its directory must. Changes are
    /// counted from now. Needs no runtime; [`Watcher::changed`] runs on tokio.
    pub fn new(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_owned();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Err(source) = std::fs::metadata(dir) {
            return Err(StateError::Io {
                path: dir.to_owned(),
                source,
            });
        }
        let events = Arc::new(Notify::new());
        let inotify = match start_inotify(&path, &events) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot watch the state database with inotify; polling every 250 ms");
                None
            }
        };
        let conn = open_probe(&path);
        let version = conn.as_ref().and_then(|c| data_version(c).ok());
        Ok(Watcher {
            file: file_id(&path),
            stamps: stamps(&path),
            path,
            events,
            inotify,
            conn,
            version,
            next_poll: Instant::now() + POLL,
            recheck_until: None,
            stats: WatchStats::default(),
        })
    }

    /// Whether inotify is in use (else only the poll notices changes).
    pub fn inotify_active(&self) -> bool {
        self.inotify.is_some()
    }

    pub fn stats(&self) -> WatchStats {
        self.stats
    }

    /// Whether anything was committed, or the path names another file, since the last check
    /// that said so.
    fn check(&mut self) -> bool {
        self.next_poll = Instant::now() + POLL;
        let file = file_id(&self.path);
        if file != self.file {
            self.file = file;
            // A replaced file keeps the probe on the old one: the state source refuses to read
            // a replaced file anyway (see `StateError::Replaced`), and this change is what
            // makes its owner try and say so.
            if self.conn.is_none() {
                self.conn = file.and_then(|_| open_probe(&self.path));
                self.version = self.conn.as_ref().and_then(|c| data_version(c).ok());
            }
            self.stamps = stamps(&self.path);
            debug!(path = %self.path.display(), "state database created, replaced or removed");
            return true;
        }
        if self.conn.is_none() && file.is_some() {
            self.conn = open_probe(&self.path);
        }
        let version = self.conn.as_ref().map(data_version);
        match version {
            Some(Ok(v)) => {
                let changed = self.version.is_some_and(|old| old != v) || self.version.is_none();
                self.version = Some(v);
                changed
            }
            // Locked or unreadable for the moment: the file times still tell a write.
            Some(Err(_)) | None => {
                let now = stamps(&self.path);
                let changed = now != self.stamps;
                self.stamps = now;
                changed
            }
        }
    }

    /// Returns after the next commit to the file by any process (or its replacement or
    /// removal). Cancel-safe: a change that a cancelled call had not reported yet is reported by
    /// the next one (the commit is compared, not the event remembered).
    pub async fn changed(&mut self) {
        loop {
            let now = Instant::now();
            let recheck = self
                .recheck_until
                .filter(|until| *until > now)
                .map(|_| now + RECHECK_EVERY);
            let poll_at = self.next_poll;
            let deadline = recheck.map_or(poll_at, |r| r.min(poll_at));
            let events = Arc::clone(&self.events);
            tokio::select! {
                () = events.notified(), if self.inotify.is_some() => {
                    // Armed before the debounce, so that a call cancelled during it leaves the
                    // re-checks to the next call.
                    self.recheck_until = Some(Instant::now() + RECHECK_FOR);
                    tokio::time::sleep(DEBOUNCE).await;
                    if self.check() {
                        self.recheck_until = None;
                        self.stats.by_event += 1;
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if self.check() {
                        self.recheck_until = None;
                        if recheck.is_some_and(|r| r < poll_at) {
                            self.stats.by_recheck += 1;
                        } else {
                            self.stats.by_poll += 1;
                        }
                        return;
                    }
                }
            }
        }
    }
}

impl Changes for Watcher {
    fn changed(&mut self) -> ChangeFuture<'_> {
        Box::pin(Watcher::changed(self))
    }
}

#[cfg(test)]
mod tests {
    use std::{process::Command, time::Duration};

    use tokio::{sync::mpsc, time::timeout};

    use super::*;
    use crate::state::{
        sqlite::SqliteState,
        testutil::{percentile, TempDir},
        StateSource,
    };

    const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);

    fn seed(state: &SqliteState) -> anyhow::Result<()> {
        state.upsert_service(&crate::model::Service {
            id: "web".to_owned(),
            vip: "203.0.113.10".parse()?,
            port: 80,
            check: None,
        })?;
        state.execute(&crate::state::write::upsert_backend(
            &crate::model::Backend {
                id: "b1".to_owned(),
                service: "web".to_owned(),
                region: "sa".parse().map_err(anyhow::Error::msg)?,
                country: "BR".parse().map_err(anyhow::Error::msg)?,
                addr: crate::model::BackendAddr::Ip("fd10::2".parse()?),
                port: 8080,
                weight: 1,
                soft_limit: 100,
                hard_limit: 1000,
                draining: false,
                enabled: true,
                check: None,
                lease: None,
            },
            0,
        )?)?;
        Ok(())
    }

    type Notices = mpsc::UnboundedReceiver<std::time::Instant>;

    /// Runs the watcher in its own task, as the agent does, stamping each notification.
    fn spawn_watcher(mut watcher: Watcher) -> (Notices, Arc<std::sync::Mutex<WatchStats>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(std::sync::Mutex::new(WatchStats::default()));
        let shared = Arc::clone(&stats);
        tokio::spawn(async move {
            loop {
                watcher.changed().await;
                let now = std::time::Instant::now();
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = watcher.stats();
                if tx.send(now).is_err() {
                    return;
                }
            }
        });
        (rx, stats)
    }

    fn summary(label: &str, mut ms: Vec<f64>) -> String {
        ms.sort_by(f64::total_cmp);
        format!(
            "{label}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
            ms.len(),
            percentile(&ms, 50.0),
            percentile(&ms, 99.0),
            ms.last().copied().unwrap_or(f64::NAN)
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_by_another_connection_is_noticed() -> anyhow::Result<()> {
        let dir = TempDir::new("watch-conn")?;
        let path = dir.path().join("routing.db");
        let state = SqliteState::open(&path)?;
        seed(&state)?;
        let (mut notices, stats) = spawn_watcher(Watcher::new(&path)?);
        let other = Connection::open(&path)?;
        let mut after_commit = Vec::new();
        for i in 0..100u32 {
            // Let the previous write settle, then forget notifications it caused.
            tokio::time::sleep(Duration::from_millis(10)).await;
            while notices.try_recv().is_ok() {}
            // Never the value it has: SQLite commits nothing for an update that changes nothing.
            let weight = i % 999 + 2;
            other.execute("UPDATE backends SET weight = ?1 WHERE id = 'b1'", [weight])?;
            let committed = std::time::Instant::now();
            let Ok(Some(seen)) = timeout(NOTICE_TIMEOUT, notices.recv()).await else {
                anyhow::bail!("write {i} was not noticed within {NOTICE_TIMEOUT:?}");
            };
            after_commit.push(seen.saturating_duration_since(committed).as_secs_f64() * 1e3);
            let (snap, _) = state.snapshot()?;
            assert_eq!(
                snap.backends[0].weight, weight,
                "the noticed change is visible"
            );
        }
        println!(
            "{}",
            summary(
                "watcher, separate connection, commit -> notice",
                after_commit
            )
        );
        println!(
            "  noticed: {:?}",
            *stats.lock().unwrap_or_else(|e| e.into_inner())
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_by_the_sqlite3_cli_is_noticed() -> anyhow::Result<()> {
        if Command::new("sqlite3").arg("-version").output().is_err() {
            println!("skipped: no sqlite3 command-line tool (apt-get install sqlite3)");
            return Ok(());
        }
        let dir = TempDir::new("watch-cli")?;
        let path = dir.path().join("routing.db");
        let state = SqliteState::open(&path)?;
        seed(&state)?;
        let (mut notices, stats) = spawn_watcher(Watcher::new(&path)?);
        let (mut from_spawn, mut from_exit, mut run) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..100u32 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            while notices.try_recv().is_ok() {}
            let enabled = i % 2;
            let sql = format!("UPDATE backends SET enabled = {enabled} WHERE id = 'b1';");
            let spawned = std::time::Instant::now();
            let db = path.clone();
            let status = tokio::task::spawn_blocking(move || {
                Command::new("sqlite3").arg(&db).arg(&sql).status()
            })
            .await??;
            let exited = std::time::Instant::now();
            anyhow::ensure!(status.success(), "sqlite3 failed: {status}");
            let Ok(Some(seen)) = timeout(NOTICE_TIMEOUT, notices.recv()).await else {
                anyhow::bail!("sqlite3 write {i} was not noticed within {NOTICE_TIMEOUT:?}");
            };
            from_spawn.push(seen.saturating_duration_since(spawned).as_secs_f64() * 1e3);
            from_exit.push(seen.saturating_duration_since(exited).as_secs_f64() * 1e3);
            run.push(exited.duration_since(spawned).as_secs_f64() * 1e3);
            let (snap, _) = state.snapshot()?;
            assert_eq!(snap.backends[0].enabled, enabled == 1);
        }
        println!(
            "{}",
            summary("watcher, sqlite3 CLI, spawn -> notice", from_spawn)
        );
        println!(
            "{}",
            summary(
                "watcher, sqlite3 CLI, exit -> notice (0 = before exit)",
                from_exit
            )
        );
        println!("{}", summary("sqlite3 CLI run time, spawn -> exit", run));
        println!(
            "  noticed: {:?}",
            *stats.lock().unwrap_or_else(|e| e.into_inner())
        );
        Ok(())
    }

    #[tokio::test]
    async fn works_as_a_boxed_state_source() -> anyhow::Result<()> {
        let dir = TempDir::new("watch-dyn")?;
        let path = dir.path().join("routing.db");
        let source: Box<dyn StateSource> = Box::new(SqliteState::open(&path)?);
        assert!(source.describe().starts_with("sqlite "));
        let mut changes = source.changes()?;
        let writer = SqliteState::open(&path)?;
        seed(&writer)?;
        timeout(NOTICE_TIMEOUT, changes.changed()).await?;
        let (snap, rejected) = tokio::task::spawn_blocking(move || source.snapshot()).await??;
        assert!(rejected.is_empty());
        assert_eq!(snap.backends.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn reads_alone_are_not_changes() -> anyhow::Result<()> {
        let dir = TempDir::new("watch-reads")?;
        let path = dir.path().join("routing.db");
        let state = SqliteState::open(&path)?;
        seed(&state)?;
        let mut watcher = Watcher::new(&path)?;
        for _ in 0..20 {
            state.snapshot()?;
        }
        let reader = Connection::open(&path)?;
        let _: i64 = reader.query_row("SELECT count(*) FROM backends", [], |r| r.get(0))?;
        drop(reader);
        // Longer than the poll: the poll must not report reads either.
        let woke = timeout(POLL * 3, watcher.changed()).await;
        assert!(
            woke.is_err(),
            "no commit, yet the watcher reported a change"
        );
        Ok(())
    }

    #[tokio::test]
    async fn creation_restore_and_replacement_are_noticed() -> anyhow::Result<()> {
        let dir = TempDir::new("watch-replace")?;
        let path = dir.path().join("routing.db");
        // Watching before the file exists.
        let mut watcher = Watcher::new(&path)?;
        let state = SqliteState::open(&path)?;
        timeout(NOTICE_TIMEOUT, watcher.changed()).await?;
        {
            let next = SqliteState::open(dir.path().join("next.db"))?;
            seed(&next)?;
        }
        // The safe way to swap a live state file: the backup API, through a connection.
        if Command::new("sqlite3").arg("-version").output().is_ok() {
            let status = Command::new("sqlite3")
                .arg(&path)
                .arg(format!(".restore {}", dir.path().join("next.db").display()))
                .status()?;
            anyhow::ensure!(status.success(), "sqlite3 .restore failed: {status}");
            timeout(NOTICE_TIMEOUT, watcher.changed()).await?;
            assert_eq!(state.snapshot()?.0.backends.len(), 1, "restored in place");
        } else {
            println!("skipped the .restore part: no sqlite3 command-line tool");
        }
        // The unsafe way is noticed, and refused by the source.
        std::fs::rename(dir.path().join("next.db"), &path)?;
        timeout(NOTICE_TIMEOUT, watcher.changed()).await?;
        assert!(matches!(state.snapshot(), Err(StateError::Replaced { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn the_poll_alone_notices_writes() -> anyhow::Result<()> {
        let dir = TempDir::new("watch-poll")?;
        let path = dir.path().join("routing.db");
        let state = SqliteState::open(&path)?;
        seed(&state)?;
        let mut watcher = Watcher::new(&path)?;
        // As if inotify were unavailable.
        watcher.inotify = None;
        state.set_backend_weight("b1", 3)?;
        timeout(POLL * 4, watcher.changed()).await?;
        Ok(())
    }
}
