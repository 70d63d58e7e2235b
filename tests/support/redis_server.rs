//! A `redis-server` of a test's own, on a free loopback port, stopped with the test.
//!
//! A missing `redis-server` is a failure, not a skip: `.ci/run` installs it, and the README
//! says how to install it locally (`apt-get install redis-server`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    cluster: bool,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain Redis.
    pub fn start() -> Self {
        Self::spawn(false)
    }

    /// A one-node Redis Cluster holding every slot: enough for the cluster client and for
    /// Redis to refuse commands whose keys are on different slots.
    pub fn start_cluster() -> Self {
        let server = Self::spawn(true);
        server.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server
            .command(&["CLUSTER", "INFO"])
            .contains("cluster_state:ok")
        {
            assert!(
                Instant::now() < deadline,
                "the one-node cluster never came up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn spawn(cluster: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = std::env::temp_dir().join(format!("tower-gateway-redis-{port}"));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut server = Self {
            port,
            cluster,
            dir,
            child: None,
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
            let _ = std::fs::remove_file(self.dir.join("nodes.conf"));
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot start redis-server ({error}): the Redis tests need it on the PATH \
                 (Debian/Ubuntu: apt-get install redis-server)"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .try_command(&["PING"])
            .is_some_and(|reply| reply.contains("PONG"))
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (`SIGKILL`); everything it held is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Sends one command over a fresh connection and returns the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args).expect("redis-server answers")
    }

    fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = Vec::new();
        let mut buffer = [0u8; 65_536];
        loop {
            let read = stream.read(&mut buffer).ok()?;
            reply.extend_from_slice(&buffer[..read]);
            if read == 0 || complete(&reply) {
                break;
            }
        }
        Some(String::from_utf8_lossy(&reply).into_owned())
    }

    /// How many times the server ran `command` (from `INFO commandstats`), e.g. `evalsha`.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.command(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }

    pub fn reset_stats(&self) {
        self.command(&["CONFIG", "RESETSTAT"]);
    }
}

/// Whether `reply` holds one whole RESP reply (simple, error, integer or bulk string).
fn complete(reply: &[u8]) -> bool {
    let Some(line_end) = reply.windows(2).position(|pair| pair == b"\r\n") else {
        return false;
    };
    match reply.first() {
        Some(b'$') => {
            let length: i64 = std::str::from_utf8(&reply[1..line_end])
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
            length < 0 || reply.len() >= line_end + 2 + length as usize + 2
        }
        _ => true,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused server would not die of SIGKILL's cleanup any later; thaw it first.
            let _ = Command::new("kill")
                .args([
                    "-CONT",
                    &self.child.as_ref().map_or(0, Child::id).to_string(),
                ])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
