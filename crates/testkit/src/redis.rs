//! A `redis-server` of its own per test (Debian's, installed by `scripts/prereqs.sh`), on a
//! free loopback port, without persistence, killed on drop. Missing: the test fails with the
//! command that installs it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::process::{free_port, Proc};

/// Where `redis-server` is: `REDIS_SERVER` or the first on `PATH`.
pub fn redis_server_bin() -> String {
    if let Ok(bin) = std::env::var("REDIS_SERVER") {
        return bin;
    }
    let found = std::env::var("PATH").ok().and_then(|path| {
        path.split(':')
            .map(|dir| Path::new(dir).join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => path.display().to_string(),
        None => panic!(
            "redis-server not found (set REDIS_SERVER or run scripts/prereqs.sh, which installs \
             Debian's redis-server)"
        ),
    }
}

pub struct Redis {
    pub port: u16,
    pub proc: Proc,
}

impl Redis {
    /// Starts `redis-server` in `dir` and waits until it answers `PING`.
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let data = dir.join("redis");
        std::fs::create_dir_all(&data).expect("creating the redis dir");
        let mut command = Command::new(redis_server_bin());
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &data.display().to_string(),
        ]);
        let proc = Proc::spawn("redis-server", command, dir.join("redis.log"));
        let mut redis = Redis { port, proc };
        redis
            .proc
            .wait_ready("PING", Duration::from_secs(15), || ping(port));
        redis
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL), as a crashed Redis.
    pub fn kill(&mut self) {
        self.proc.stop();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream
        .read(&mut answer)
        .is_ok_and(|n| answer[..n].starts_with(b"+PONG"))
}
