//! Starting compute replicas on this machine: `jetsonmind compute` child
//! processes on free loopback ports, with this process's configuration.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jetsonmind_core::upstream::Secret;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How to start one more compute replica.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `jetsonmind` binary.
    pub program: PathBuf,
    /// Global flags to pass before `compute` (`--config`, `--data-dir`).
    pub global_args: Vec<String>,
    /// Environment to add (the `JETSONMIND_*` settings of this process are inherited).
    pub env: Vec<(String, String)>,
    /// How long it may take to listen.
    pub start_timeout: Duration,
}

/// A started replica: its process, the URL it serves, and the secret it
/// requires of every caller (only this process holds it).
pub struct Started {
    pub child: Child,
    pub url: String,
    pub secret: Secret,
}

impl Launcher {
    /// Start `jetsonmind compute --listen 127.0.0.1:0` and wait for its URL.
    ///
    /// Its port is open to every local user, so it requires a secret made
    /// for this launch, handed over on its stdin (never in its arguments or
    /// environment, which other users can read).
    pub async fn start(&self) -> Result<Started, String> {
        let secret = jetsonmind_core::auth::keys::random_hex(32).map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.global_args)
            .args(["compute", "--listen", "127.0.0.1:0", "--secret-from-stdin"])
            .envs(self.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // A replica never outlives the process that started it: killed
            // when its handle is dropped, and told when we die abruptly.
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl(2) in the child before exec; it touches no memory
        // shared with the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(format!("{secret}\n").as_bytes())
            .await
            .map_err(|e| format!("cannot hand the replica its secret: {e}"))?;
        drop(stdin);
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let found = tokio::time::timeout(self.start_timeout, async {
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = listening_url(&line) {
                    return Ok(url);
                }
                seen.push(line);
            }
            Err(format!(
                "the replica exited before listening: {}",
                seen.join(" | ")
            ))
        })
        .await;
        let url = match found {
            Ok(Ok(url)) => url,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(format!(
                    "the replica did not listen within {} ms",
                    self.start_timeout.as_millis()
                ));
            }
        };
        // Keep reading its log so the pipe never fills and blocks it.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "jetsonmind_control::replica", "{line}");
            }
        });
        Ok(Started {
            child,
            url,
            secret: Secret::new(secret),
        })
    }
}

/// The URL in a server's "… listening on http://ADDR/mcp" line.
pub fn listening_url(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("listening on ")?;
    let url = rest.split_whitespace().next()?;
    url.starts_with("http://").then(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_url_from_the_listening_line() {
        assert_eq!(
            listening_url("jetsonmind-compute listening on http://127.0.0.1:40123/mcp"),
            Some("http://127.0.0.1:40123/mcp".into())
        );
        assert_eq!(listening_url("loading model"), None);
    }
}
