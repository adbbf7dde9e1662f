//! The `jetsonmind` binary as users run it: servers in their own processes,
//! a gateway federating them over HTTP, and a backend killed and restarted.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_jetsonmind");

/// A child process killed when dropped.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `jetsonmind ARGS` and wait for its "listening on URL" line.
fn start(args: &[&str], envs: &[(&str, String)]) -> Proc {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jetsonmind");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining so the child never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("listening on ").nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server announced its URL");
    Proc { child, url }
}

async fn rpc(url: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

async fn tool_names(url: &str) -> Vec<String> {
    let list = rpc(url, "tools/list", json!({})).await;
    let mut names: Vec<String> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Poll until `check` holds on the gateway's tool list, or fail after 10 s.
async fn eventually(url: &str, what: &str, check: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = tool_names(url).await;
        if check(&names) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: tools are {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn port_of(url: &str) -> String {
    url.trim_end_matches("/mcp")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_gateway_process_federates_a_killed_and_restarted_backend() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_string();
    let control = start(
        &[
            "control",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
        ],
        &[],
    );
    let port = port_of(&control.url);
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[gateway.backends]]\nname = \"ctl\"\nurl = \"{}\"\n",
            control.url
        ),
    )
    .unwrap();
    let fast_health = [("JETSONMIND_GATEWAY__HEALTH_INTERVAL_MS", "100".to_string())];
    let gateway = start(
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            &data_dir,
        ],
        &fast_health,
    );
    eventually(&gateway.url, "control tools federated", |n| {
        n.iter().any(|t| t == "route_request")
    })
    .await;

    let result = rpc(
        &gateway.url,
        "tools/call",
        json!({"name": "monitor_health", "arguments": {}}),
    )
    .await;
    // Forwarded to the control process, which routes over no replicas here.
    assert_eq!(result["result"]["isError"], false, "{result}");
    assert_eq!(
        result["result"]["structuredContent"]["total"], 0,
        "{result}"
    );
    assert_eq!(
        result["result"]["_meta"]["jetsonmind/route"][0]["backend"],
        "ctl"
    );

    drop(control); // SIGKILL: the process is gone with its sockets.
    eventually(&gateway.url, "killed backend dropped", |n| {
        !n.iter().any(|t| t == "route_request")
    })
    .await;
    let listed = rpc(
        &gateway.url,
        "tools/call",
        json!({"name": "manage_connections", "arguments": {"action": "list"}}),
    )
    .await;
    assert_eq!(
        listed["result"]["structuredContent"]["backends"][0]["up"], false,
        "{listed}"
    );

    let _control = start(
        &[
            "control",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &data_dir,
        ],
        &[],
    );
    eventually(&gateway.url, "restarted backend back", |n| {
        n.iter().any(|t| t == "route_request")
    })
    .await;
}

#[tokio::test]
async fn non_loopback_addresses_need_a_way_in_and_then_require_it() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let output = Command::new(BIN)
        .args(["--data-dir", data_dir, "serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("(not loopback) requires authentication") && stderr.contains("keys create"),
        "{stderr}"
    );

    let created = Command::new(BIN)
        .args([
            "--data-dir",
            data_dir,
            "keys",
            "create",
            "--name",
            "ops",
            "--scope",
            "tools:*",
        ])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    let listed = Command::new(BIN)
        .args(["--data-dir", data_dir, "keys", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("ops\ttools:*") && !listed.contains(&key),
        "{listed}"
    );

    let served = start(
        &["--data-dir", data_dir, "serve", "--listen", "0.0.0.0:0"],
        &[],
    );
    let url = served.url.replace("0.0.0.0", "127.0.0.1");
    let post = |token: Option<&str>| {
        let mut request = reqwest::Client::new()
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let anonymous = post(None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let allowed = post(Some(&key)).await.unwrap();
    assert_eq!(allowed.status(), 200);
}

#[test]
fn a_key_made_elsewhere_is_added_once_and_never_printed() {
    let data = tempfile::tempdir().unwrap();
    let add = |key: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args([
            "--data-dir",
            data.path().to_str().unwrap(),
            "keys",
            "create",
        ]);
        command.args([
            "--name",
            "gateway",
            "--scope",
            "admin",
            "--key-from-env",
            "JM_KEY",
        ]);
        command.env_remove("JM_KEY");
        if let Some(key) = key {
            command.env("JM_KEY", key);
        }
        command.output().unwrap()
    };
    let key = format!("jm_gateway_{}", "0123456789abcdef".repeat(4));
    for (attempt, said) in [
        (add(Some(&key)), "added key gateway"),
        (add(Some(&key)), "there already"),
    ] {
        let stderr = String::from_utf8_lossy(&attempt.stderr);
        assert!(
            attempt.status.success() && stderr.contains(said),
            "{attempt:?}"
        );
        assert!(
            attempt.stdout.is_empty() && !stderr.contains(&key[11..]),
            "never printed"
        );
    }
    let unset = add(None);
    assert!(
        String::from_utf8_lossy(&unset.stderr).contains("JM_KEY is not set"),
        "{unset:?}"
    );
    let malformed = add(Some("jm_gateway_tooshort-secret"));
    let stderr = String::from_utf8_lossy(&malformed.stderr);
    assert!(
        !malformed.status.success() && stderr.contains("jm_<id>_<secret>"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("tooshort"),
        "a refused key is not echoed either: {stderr}"
    );
    let listed = Command::new(BIN)
        .args(["--data-dir", data.path().to_str().unwrap(), "keys", "list"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(listed.stdout).unwrap(),
        "gateway\tgateway\tadmin\n"
    );
}

#[test]
fn config_shows_env_overrides_and_rejects_typos() {
    let output = Command::new(BIN)
        .arg("config")
        .env("JETSONMIND_HTTP__MAX_BODY_BYTES", "65536")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("max_body_bytes = 65536"), "{text}");

    let output = Command::new(BIN)
        .arg("config")
        .env("JETSONMIND_HTTP__MAX_BODY", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_body"));
}

/// Stop a server the way a service manager does, and wait for it to exit.
fn terminate(mut proc: Proc) {
    let stopped = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn analytics_and_settings_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_string();
    let args = ["data", "--listen", "127.0.0.1:0", "--data-dir", &data_dir];
    let data = start(&args, &[]);
    for _ in 0..3 {
        let listed = rpc(
            &data.url,
            "tools/call",
            json!({"name": "manage_models", "arguments": {"action": "list"}}),
        )
        .await;
        assert_eq!(listed["result"]["isError"], false, "{listed}");
        assert_eq!(listed["result"]["structuredContent"]["models"], json!([]));
    }
    let updated = rpc(
        &data.url,
        "tools/call",
        json!({"name": "update_settings", "arguments": {"settings": {"cache": {"max_bytes": 65536}}}}),
    )
    .await;
    assert_eq!(updated["result"]["isError"], false, "{updated}");
    // Well within the 10 s flush interval: what reaches the database is the
    // flush at shutdown.
    terminate(data);

    let data = start(&args, &[]);
    let read = |uri: &'static str| {
        let url = data.url.clone();
        async move {
            let result = rpc(&url, "resources/read", json!({ "uri": uri })).await;
            let text = result["result"]["contents"][0]["text"]
                .as_str()
                .unwrap()
                .to_string();
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let analytics = read("jetson://performance/analytics").await;
    let series = analytics["series"].as_array().unwrap();
    let models = series
        .iter()
        .find(|s| s["tool"] == "manage_models")
        .unwrap_or_else(|| panic!("no manage_models series: {analytics}"));
    assert_eq!(models["calls"], 3, "{analytics}");
    assert_eq!(models["windows"]["1h"]["calls"], 3, "{analytics}");
    let settings = read("jetson://config/settings").await;
    assert_eq!(settings["cache"]["max_bytes"], 65536);
}
