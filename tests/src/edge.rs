//! Edge agents, MQTT clients and brokers under test, and a UDP relay that delays or drops
//! the agent's QUIC packets.

use crate::*;
use anyhow::{Context, bail};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An edge agent process with its addresses.
pub struct Agent {
    pub process: Process,
    pub mqtt_port: u16,
    pub mqtt5_port: u16,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
}

impl Agent {
    /// Starts an edge agent that ships to `core_quic`, and waits until `/health` answers.
    pub fn start(
        work: &Path,
        certs: &Path,
        core_quic: SocketAddr,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mqtt_port = free_tcp_port();
        let mqtt5_port = free_tcp_port();
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let data_dir = work.join("agent-data");
        let mut cmd = Command::new(binary("edge-agent"));
        cmd.args(["--agent-id", "test-agent"])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
            .args(["--mqtt5-listen", &format!("127.0.0.1:{mqtt5_port}")])
            .args(["--http-listen", &http.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--core", &core_quic.to_string()])
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("agent.pem"))
            .arg("--key")
            .arg(certs.join("agent-key.pem"))
            .args(extra_args);
        let process = Process::spawn("edge-agent", cmd, work.join("agent.log"))?;
        let agent = Self {
            process,
            mqtt_port,
            mqtt5_port,
            http,
            data_dir,
        };
        let url = format!("http://{}/health", agent.http);
        wait_for("edge-agent /health", Duration::from_secs(30), || {
            matches!(http_get(&url), Ok((200, _))).then_some(())
        })?;
        Ok(agent)
    }

    /// The agent's `/metrics` text; panics when the scrape fails (see [`Core::metrics`]).
    pub fn metrics(&self) -> String {
        scrape(&format!("http://{}/metrics", self.http))
    }

    /// Publishes one message with the real `mosquitto_pub` (QoS 1 by default).
    pub fn publish(&self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        mosquitto_pub(self.mqtt_port, topic, payload, &[])
    }
}

impl Agent {
    /// Sum of every sample of the agent's metric `name` (all label sets); panics when the
    /// scrape has no such metric (see [`metric_sum`]).
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics(), name, None)
    }
}

impl Agent {
    /// Starts an edge agent like [`Agent::start`] with `config` (TOML) written to
    /// `<work>/agent.toml` and passed as `--config`; `extra_args` still win over the file.
    pub fn start_with_config(
        work: &Path,
        certs: &Path,
        core_quic: SocketAddr,
        config: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let path = work.join("agent.toml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let path = path.to_str().context("work directory path is not UTF-8")?;
        let mut args = vec!["--config", path];
        args.extend_from_slice(extra_args);
        Self::start(work, certs, core_quic, &args)
    }

    /// Publishes `payload` as one message by writing it to a file first and sending it with
    /// `mosquitto_pub -f`, the way a binary payload (a protobuf) is sent from a shell.
    pub fn publish_file(&self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), payload)?;
        let out = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.mqtt_port.to_string(),
                "-q",
                "1",
            ])
            .args(["-t", topic, "-f"])
            .arg(file.path())
            .stdin(Stdio::null())
            .output()
            .context("running mosquitto_pub (apt-get install mosquitto-clients)")?;
        if !out.status.success() {
            bail!(
                "mosquitto_pub -t {topic} -f failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Runs `mosquitto_pub` against 127.0.0.1:`port`. The payload is passed on stdin (`-s`), so
/// any bytes, including a 1 MB payload, can be sent.
pub fn mosquitto_pub(port: u16, topic: &str, payload: &[u8], extra: &[&str]) -> anyhow::Result<()> {
    let out = run_mosquitto_pub(port, topic, payload, extra)?;
    if !out.status.success() {
        bail!(
            "mosquitto_pub -t {topic} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs [`mosquitto_pub`] expecting a refusal: `Ok` with the client's output when it ran and
/// exited non-zero; an error when it published, or when it could not run at all (a missing
/// client must not pass for a refusal).
pub fn mosquitto_pub_refused(port: u16, topic: &str, extra: &[&str]) -> anyhow::Result<String> {
    let out = run_mosquitto_pub(port, topic, b"1", extra)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        bail!("mosquitto_pub -t {topic} {extra:?} was not refused: it published ({text})");
    }
    Ok(text)
}

/// `mosquitto_pub` to its exit; an error only when it could not be run.
fn run_mosquitto_pub(
    port: u16,
    topic: &str,
    payload: &[u8],
    extra: &[&str],
) -> anyhow::Result<std::process::Output> {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-s",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running mosquitto_pub (apt-get install mosquitto-clients)")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A client refused early may close stdin first: its exit status tells.
        let _ = stdin.write_all(payload);
    }
    Ok(child.wait_with_output()?)
}

/// A long-lived `mosquitto_pub -l` client (QoS 1): every line written to it is published as
/// one message on its topic. Its output goes to a log file. Killed when dropped.
pub struct LinePublisher {
    topic: String,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    log: PathBuf,
}

impl LinePublisher {
    /// Starts `mosquitto_pub -l` against 127.0.0.1:`port`, publishing on `topic`.
    pub fn start(port: u16, topic: &str, log: PathBuf) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", topic, "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .context("running mosquitto_pub (apt-get install mosquitto-clients)")?;
        let stdin = child.stdin.take();
        Ok(Self {
            topic: topic.to_owned(),
            child,
            stdin,
            log,
        })
    }

    /// Hands one message (without its newline) to the client; returns once the pipe took it.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("publisher for {} already finished", self.topic))?;
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        stdin.write_all(buf.as_bytes()).with_context(|| {
            format!(
                "mosquitto_pub -t {} stopped taking lines: {}",
                self.topic,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }

    /// Closes stdin, so the client publishes what is left and exits; fails unless it exits
    /// successfully within `timeout`.
    pub fn finish(&mut self, timeout: Duration) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let child = &mut self.child;
        let status = wait_for(
            &format!("mosquitto_pub -t {} to exit", self.topic),
            timeout,
            || child.try_wait().ok().flatten(),
        )?;
        if !status.success() {
            bail!(
                "mosquitto_pub -t {} exited with {status}: {}",
                self.topic,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for LinePublisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `mosquitto` broker (Debian's /usr/sbin/mosquitto) on a free loopback port, with a
/// temporary config: anonymous clients, in-memory persistence only, queues large enough that
/// it never drops a QoS 1 message for an offline persistent session.
pub struct Mosquitto {
    pub process: Process,
    pub port: u16,
}

impl Mosquitto {
    pub fn start(work: &Path) -> anyhow::Result<Self> {
        let port = free_tcp_port();
        let config = work.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 0\nmax_inflight_messages 20\nlog_dest stdout\n\
                 log_type error\nlog_type warning\nlog_type notice\n"
            ),
        )?;
        let program = if Path::new("/usr/sbin/mosquitto").exists() {
            PathBuf::from("/usr/sbin/mosquitto")
        } else {
            PathBuf::from("mosquitto")
        };
        let mut cmd = Command::new(program);
        cmd.arg("-c").arg(&config);
        let process = Process::spawn(
            "mosquitto (apt-get install mosquitto)",
            cmd,
            work.join("mosquitto.log"),
        )?;
        wait_for("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        Ok(Self { process, port })
    }
}

/// Publishes every line of `lines` as one message with one `mosquitto_pub -l` process
/// (`extra` adds options such as `-q 1 -M 1000`); returns when the client has exited
/// successfully.
pub fn mosquitto_pub_lines(
    port: u16,
    topic: &str,
    lines: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-l",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running mosquitto_pub (apt-get install mosquitto-clients)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "mosquitto_pub -l -t {topic} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A userspace UDP proxy that adds latency: datagrams from a client to `listen` go to
/// `target`, and the target's answers go back to that client, each direction delayed by
/// `delay` (order kept). Stands in for `tc netem`, which needs a kernel module. One client at
/// a time (the last address it heard from), which fits an agent: all its QUIC connections
/// share one socket. Stops when dropped.
pub struct UdpDelayProxy {
    pub listen: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpDelayProxy {
    pub fn start(target: SocketAddr, delay: Duration) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex, mpsc};
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        back.connect(target)?;
        let listen = front.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let mut threads = Vec::new();
        // For each direction a reader stamps every datagram with its due time and a writer
        // sends it then: a constant delay keeps the order.
        for forward in [true, false] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let (from, to) = if forward {
                (Arc::clone(&front), Arc::clone(&back))
            } else {
                (Arc::clone(&back), Arc::clone(&front))
            };
            from.set_read_timeout(Some(Duration::from_millis(100)))?;
            let (reader_stop, reader_client) = (Arc::clone(&stop), Arc::clone(&client));
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !reader_stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = from.recv_from(&mut buf) else {
                        continue;
                    };
                    if forward && let Ok(mut c) = reader_client.lock() {
                        *c = Some(peer);
                    }
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }));
            let (writer_stop, writer_client) = (Arc::clone(&stop), Arc::clone(&client));
            threads.push(std::thread::spawn(move || {
                while !writer_stop.load(Ordering::Relaxed) {
                    let Ok((due, datagram)) = rx.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let _ = if forward {
                        to.send(&datagram)
                    } else {
                        match writer_client.lock().ok().and_then(|c| *c) {
                            Some(peer) => to.send_to(&datagram, peer),
                            None => continue,
                        }
                    };
                }
            }));
        }
        Ok(Self {
            listen,
            stop,
            threads,
        })
    }
}

impl Drop for UdpDelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
