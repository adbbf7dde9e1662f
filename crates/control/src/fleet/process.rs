//! Stopping the process `scale_cluster` started for a replica.

use std::time::Duration;

use super::{Origin, Replica};

impl Replica {
    /// Stop the process `scale_cluster` started for it, if any.
    pub async fn stop_process(&self) {
        let Origin::Started(child) = &self.origin else {
            return;
        };
        let child = child.lock().expect("child lock").take();
        if let Some(mut child) = child {
            terminate(&mut child).await;
        }
    }
}

/// SIGTERM, a grace period, then SIGKILL.
async fn terminate(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we own; no memory is touched.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}
