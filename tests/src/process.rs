use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};

/// A free TCP port on 127.0.0.1. The port is released before returning, so a
/// race with another process is possible but rare; servers started on it fail
/// loudly if it was taken.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// The path of one of the workspace's binaries (`backbeat-processor`, …),
/// built by the same `cargo test` run. Integration test executables live in
/// `target/<profile>/deps/`; binaries one level up.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let mut dir = exe.parent().expect("executable has a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not built; run the tests with `cargo test --workspace` so that cargo builds every binary",
        path.display()
    );
    path
}

/// Signals a test sends to a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Stop,
    Cont,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether every thread of `pid` is in the stopped state (`T`), per
/// `/proc/{pid}/task/*/stat`.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // a thread that exited meanwhile
        };
        // "tid (comm) S …": the state follows the last ')', as comm may hold one.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            return false;
        }
        any = true;
    }
    any
}

/// A child process that is killed (SIGKILL) and reaped when dropped, unless it
/// has already exited.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> anyhow::Result<ChildGuard> {
        let name = name.into();
        let child = command.spawn().map_err(|e| anyhow::anyhow!("starting {name}: {e}"))?;
        Ok(ChildGuard {
            name,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let Some(child) = &self.child else {
            anyhow::bail!("{} has already been reaped", self.name)
        };
        // SAFETY: kill(2) on a pid we own and have not reaped.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal.raw()) };
        if rc != 0 {
            anyhow::bail!("kill({}, {signal:?}): {}", self.name, std::io::Error::last_os_error());
        }
        if signal == Signal::Stop {
            // kill(2) only queues the stop: each thread stops when it next
            // leaves the kernel, and one in a long syscall (an fsync) keeps
            // going until it returns. A test that stops a server means every
            // thread of it: wait until /proc says so.
            let pid = child.id();
            crate::wait_until(&format!("{} to be stopped", self.name), STOP_TIMEOUT, || {
                all_threads_stopped(pid).then_some(())
            })?;
        }
        Ok(())
    }

    /// SIGKILL and reap: the process is gone when this returns.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own (after SIGTERM, say), up to
    /// `timeout`; kills it and fails if it does not.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> anyhow::Result<ExitStatus> {
        let name = self.name.clone();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("{name} already reaped"))?;
        let status = crate::wait_until(&format!("{name} to exit"), timeout, || child.try_wait().ok().flatten());
        match status {
            Ok(s) => {
                self.child = None;
                Ok(s)
            }
            Err(e) => {
                self.kill();
                Err(e)
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
