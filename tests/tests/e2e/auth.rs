//! NATS credentials are honoured: against a server that requires a login, a
//! service started with `--nats-user/--nats-password` works and one started
//! without is refused by the server (and never says it is ready).

use std::process::{Command, Stdio};
use std::time::Duration;

use backbeat_tests::{bin_path, free_port, http_get, wait_until_async, ChildGuard, NatsServer, NatsServerOptions};

const TIMEOUT: Duration = Duration::from_secs(60);

fn gateway(url: &str, port: u16, credentials: &[&str], log: &std::path::Path) -> anyhow::Result<ChildGuard> {
    let mut command = Command::new(bin_path("backbeat-ingest"));
    command
        .args(["--nats", url, "--listen", &format!("127.0.0.1:{port}")])
        .args(credentials)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    ChildGuard::spawn("backbeat-ingest", &mut command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_log_in_with_the_configured_credentials() -> anyhow::Result<()> {
    let server = NatsServer::start_with(NatsServerOptions {
        user_password: Some(("backbeat", "s3cret")),
        ..NatsServerOptions::default()
    })?;
    let dir = tempfile::tempdir()?;

    // Without credentials the server refuses the connection: wait for its log to say so.
    let anonymous_port = free_port();
    let _anonymous = gateway(&server.url(), anonymous_port, &[], &dir.path().join("anonymous.log"))?;
    wait_until_async("the server to refuse the anonymous gateway", TIMEOUT, || async {
        server.log_tail().contains("authentication error").then_some(())
    })
    .await?;
    let ready = http_get(anonymous_port, "/ready").map(|(status, _)| status);
    assert_ne!(
        ready,
        Some(200),
        "a gateway that cannot log in must not say it is ready"
    );

    // With them, the gateway is ready and stores a claim.
    let port = free_port();
    let _gateway = gateway(
        &server.url(),
        port,
        &["--nats-user", "backbeat", "--nats-password", "s3cret"],
        &dir.path().join("gateway.log"),
    )?;
    wait_until_async("the gateway with credentials to be ready", TIMEOUT, || async move {
        http_get(port, "/ready").and_then(|(status, _)| (status == 200).then_some(()))
    })
    .await?;

    // A user without its password is a usage error, not a silent anonymous login.
    let output = Command::new(bin_path("backbeat-ingest"))
        .args(["--nats-user", "backbeat"])
        .output()?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--nats-password"));
    Ok(())
}
