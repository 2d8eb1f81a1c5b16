//! The shipped NATS permissions (`deploy/nats/permissions.conf`, issue 22
//! item 5) on a real nats-server that includes the file unchanged, its
//! passwords given in the server's environment as a deployment gives them.
//!
//! The whole system runs under them: the pulse emits, the gateway stores an
//! agent's claims, the processor publishes reports, the query service answers
//! SQL, and not one permissions violation is logged while it does. Then an
//! agent's credentials try what an agent must not: publish a beat, a claim
//! straight to the stream's subject (past the gateway's validation), a
//! BarReport, a claim to another cluster's intake, read another cluster's
//! reports, and delete a stream; the services' own users try to delete and
//! edit a stream. Each attempt is refused by the server (a permissions
//! violation error) and nothing of it is stored; the admin user can delete a
//! stream, so the refusals are the permissions' doing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use backbeat_schemas::names::{BARS_STREAM, EVENTS_STREAM, REJECTS_STREAM};
use backbeat_tests::{http_post, wait_until_async, workspace_root, FaultRecord, NatsServer, NatsServerOptions};

use crate::stack::{messages_on, spawn, ServicesOptions, Stack, StackOptions, BAR, TIMEOUT};

/// The agents' cluster: one the shipped file has an agent user for.
const CLUSTER: &str = "local";
/// Another cluster of the shipped file.
const OTHER_CLUSTER: &str = "eu-1";
const ADMIN: &str = "backbeat-admin";
const AGENT: &str = "agent-local";
/// How long an attempt's (never coming) JetStream answer is awaited.
const REFUSED_WAIT: Duration = Duration::from_secs(2);

/// Every user of the shipped file: (user, password variable).
const USERS: &[(&str, &str)] = &[
    (ADMIN, "NATS_ADMIN_PASSWORD"),
    ("backbeat-pulse", "NATS_PULSE_PASSWORD"),
    ("backbeat-ingest", "NATS_INGEST_PASSWORD"),
    ("backbeat-processor", "NATS_PROCESSOR_PASSWORD"),
    ("backbeat-query", "NATS_QUERY_PASSWORD"),
    (AGENT, "NATS_AGENT_LOCAL_PASSWORD"),
    ("agent-eu-1", "NATS_AGENT_EU_1_PASSWORD"),
    ("agent-us-1", "NATS_AGENT_US_1_PASSWORD"),
];

/// The test's password of `user` (distinct for each). One word: nats-server
/// parses a variable's value as a config value, and a space ends one.
fn password(user: &str) -> String {
    format!("test-password-of-{user}")
}

fn login_args(user: &str) -> Vec<String> {
    vec![
        "--nats-user".into(),
        user.into(),
        "--nats-password".into(),
        password(user),
    ]
}

/// A client logged in as `user`, and the errors the server sends it.
async fn connect_as(server: &NatsServer, user: &str) -> anyhow::Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    seen.lock().expect("errors lock").push(error.to_string());
                }
            }
        })
        .connect(server.url())
        .await?;
    Ok((client, errors))
}

/// Waits until the server has told the client it refused `subject`.
async fn wait_for_violation(errors: &Arc<Mutex<Vec<String>>>, subject: &str) -> anyhow::Result<String> {
    wait_until_async(
        &format!("a permissions violation for {subject}"),
        TIMEOUT,
        || async move {
            errors
                .lock()
                .expect("errors lock")
                .iter()
                .find(|e| {
                    let e = e.to_lowercase();
                    e.contains("permissions violation") && e.contains(&subject.to_lowercase())
                })
                .cloned()
        },
    )
    .await
}

/// The server log's permission violations.
fn violations(server: &NatsServer) -> Vec<String> {
    std::fs::read_to_string(server.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("Violation"))
        .map(str::to_string)
        .collect()
}

/// How many messages `stream` holds on `subject` whose payload contains `marker`.
async fn stored_with(js: &jetstream::Context, stream: &str, subject: &str, marker: &str) -> anyhow::Result<usize> {
    Ok(messages_on(js, stream, subject)
        .await?
        .iter()
        .filter(|(_, payload)| String::from_utf8_lossy(payload).contains(marker))
        .count())
}

fn claim(agent: &str, beat_index: u64, marker: &str) -> String {
    format!(
        r#"{{"type":"backbeat.statusclaim.v1","agent_id":"{agent}","task_id":"{marker}","beat_index":{beat_index},"state":"executing","beats_left":3,"progress":0.5,"hlc":"1:0000:0001"}}"#
    )
}

/// One refused kind of attempt, for the fault table.
fn record(fault: &str, injected: u64, notes: String) -> anyhow::Result<()> {
    FaultRecord {
        fault: fault.into(),
        injected,
        checked: "refused (permissions violation), nothing stored".into(),
        notes,
        ..FaultRecord::default()
    }
    .record()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_runs_under_the_shipped_permissions_and_an_agent_cannot_forge_or_delete() -> anyhow::Result<()> {
    let server = NatsServer::start_with(NatsServerOptions {
        include: Some(workspace_root().join("deploy/nats/permissions.conf")),
        env: USERS
            .iter()
            .map(|(user, variable)| (variable.to_string(), password(user)))
            .collect(),
        ..NatsServerOptions::default()
    })?;
    let mut stack = Stack::start_with(StackOptions {
        server: Some(server),
        services: ServicesOptions {
            cluster: CLUSTER,
            extra_args: vec![
                ("backbeat-pulse", login_args("backbeat-pulse")),
                ("backbeat-ingest", login_args("backbeat-ingest")),
                ("backbeat-processor", login_args("backbeat-processor")),
                ("backbeat-query", login_args("backbeat-query")),
            ],
            query: true,
            ..ServicesOptions::default()
        },
    })
    .await?;
    let (admin, _) = connect_as(&stack.server, ADMIN).await?;
    let admin_js = jetstream::new(admin.clone());

    // Agents of the cluster, under the agent's user: the simulated fleet
    // follows the beats and sends its claims through the gateway.
    let logs = stack.logs();
    let mut sim_args: Vec<String> = [
        "--nats",
        &stack.server.url(),
        "--cluster",
        CLUSTER,
        "--bar-length",
        BAR,
        "--agents",
        "20",
        "--rate",
        "200",
        "--claims",
        "200",
        "--seed",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sim_args.extend(login_args(AGENT));
    let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
    let mut sim = spawn("backbeat-agent-sim", &logs, &sim_args)?;
    let status = sim.wait_exit(TIMEOUT)?;
    let sim_log = std::fs::read_to_string(logs.join("backbeat-agent-sim.log")).unwrap_or_default();
    assert!(
        status.success(),
        "agent-sim under the agent's user: {status}\n{sim_log}"
    );

    // The agent's own client: a claim through its intake is answered and stored.
    let (agent, agent_errors) = connect_as(&stack.server, AGENT).await?;
    let agent_js = jetstream::new(agent.clone());
    let beat_subject = format!("backbeat.{CLUSTER}.beat");
    // Its cluster's live beats (the agent library also reads the last stored
    // one, through a consumer filtered to the beat subject: agent-sim did).
    let mut beats = agent.subscribe(beat_subject.clone()).await?;
    let next_beat = tokio::time::timeout(TIMEOUT, futures::StreamExt::next(&mut beats))
        .await
        .map_err(|_| anyhow::anyhow!("no beat reached the agent"))?
        .ok_or_else(|| anyhow::anyhow!("the agent's beats ended"))?;
    let beat: serde_json::Value = serde_json::from_slice(&next_beat.payload)?;
    let beat = beat["beat_index"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("a beat without an index: {beat}"))?;
    drop(beats);
    let answer = agent
        .request(
            format!("backbeat.{CLUSTER}.intake"),
            claim("alice", beat, "honest").into(),
        )
        .await
        .context("the agent's claim through its intake")?;
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload)?;
    assert_eq!(answer["ok"], true, "the agent's claim through its intake: {answer}");
    let claim_subject = format!("backbeat.{CLUSTER}.claim");
    assert_eq!(
        stored_with(&admin_js, EVENTS_STREAM, &claim_subject, "honest").await?,
        1
    );

    // The agent reads its cluster's reports (an ordered consumer, as the client library does).
    let bar_subject = format!("backbeat.{CLUSTER}.bar");
    let bars = agent_js
        .get_stream(BARS_STREAM)
        .await
        .context("the agent's BARS info")?;
    let consumer = bars
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            // Named, as the agent library names them: the create request's
            // subject then names the filter, which the permissions check.
            name: Some("agent-reports".into()),
            filter_subject: bar_subject.clone(),
            ..Default::default()
        })
        .await
        .context("the agent's consumer of its reports")?;
    let mut reports = consumer.messages().await.context("the agent's reports")?;
    let first_report = tokio::time::timeout(TIMEOUT, futures::StreamExt::next(&mut reports))
        .await
        .map_err(|_| anyhow::anyhow!("no BarReport reached the agent"))?
        .ok_or_else(|| anyhow::anyhow!("the agent's reports ended"))??;
    let report: serde_json::Value = serde_json::from_slice(&first_report.payload)?;
    assert_eq!(report["cluster_id"], CLUSTER, "{report}");
    drop(reports);

    // The query service answers SQL over what the others stored.
    let query_port = stack.query.as_ref().expect("a query node").port;
    const COUNTS: &str =
        r#"{"sql": "SELECT (SELECT count(*) FROM bar_reports) AS reports, (SELECT count(*) FROM claims) AS claims"}"#;
    let counts = wait_until_async("the query service to hold reports and claims", TIMEOUT, || async move {
        let (status, body) = http_post(query_port, "/api/v1/sql", "application/json", COUNTS)?;
        (status == 200).then_some(())?;
        // {"columns": [...], "rows": [[reports, claims]]}
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        let row = answer["rows"].as_array()?.first()?.clone();
        (row[0].as_u64()? >= 1 && row[1].as_u64()? >= 201).then_some(row)
    })
    .await
    .with_context(|| {
        format!(
            "the last answer: {:?}",
            http_post(query_port, "/api/v1/sql", "application/json", COUNTS)
        )
    })?;
    eprintln!("query under its permissions: [reports, claims] = {counts}");
    let quiet = violations(&stack.server);
    assert!(
        quiet.is_empty(),
        "the system ran into its own permissions:\n{}",
        quiet.join("\n")
    );

    // An agent's forgeries, each refused by the server and not stored.
    agent_js_timeout_publish(
        &agent_js,
        &agent_errors,
        &admin_js,
        &beat_subject,
        EVENTS_STREAM,
        "forged beat",
    )
    .await?;
    record(
        "an agent publishes a beat (agent's credentials)",
        1,
        format!("{beat_subject}: publish violation"),
    )?;
    agent_js_timeout_publish(
        &agent_js,
        &agent_errors,
        &admin_js,
        &claim_subject,
        EVENTS_STREAM,
        "forged claim",
    )
    .await?;
    record(
        "an agent publishes a claim straight to the stream",
        1,
        format!("{claim_subject}: publish violation"),
    )?;
    agent_js_timeout_publish(
        &agent_js,
        &agent_errors,
        &admin_js,
        &bar_subject,
        BARS_STREAM,
        "forged report",
    )
    .await?;
    record(
        "an agent publishes a BarReport",
        1,
        format!("{bar_subject}: publish violation"),
    )?;

    // Another cluster's intake: the gateway never sees it, so nothing is
    // stored for that cluster, neither a claim nor a dead letter.
    let other_intake = format!("backbeat.{OTHER_CLUSTER}.intake");
    let other = agent
        .request(other_intake.clone(), claim("alice", beat, "elsewhere").into())
        .await;
    assert!(
        other.is_err(),
        "a claim to another cluster's intake was answered: {other:?}"
    );
    wait_for_violation(&agent_errors, &other_intake).await?;
    for (stream, subject) in [
        (EVENTS_STREAM, format!("backbeat.{OTHER_CLUSTER}.claim")),
        (REJECTS_STREAM, format!("backbeat.{OTHER_CLUSTER}.reject")),
        (REJECTS_STREAM, "backbeat._invalid.reject".to_string()),
    ] {
        assert_eq!(
            stored_with(&admin_js, stream, &subject, "elsewhere").await?,
            0,
            "{subject}"
        );
    }
    record(
        "an agent sends a claim to another cluster's intake",
        1,
        format!("{other_intake}: publish violation; no claim or dead letter of {OTHER_CLUSTER}"),
    )?;

    // Another cluster's reports: no consumer for them.
    let other_bars = bars
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            name: Some("agent-other-reports".into()),
            filter_subject: format!("backbeat.{OTHER_CLUSTER}.bar"),
            ..Default::default()
        })
        .await;
    assert!(other_bars.is_err(), "an agent read another cluster's reports");
    wait_for_violation(&agent_errors, &format!("$JS.API.CONSUMER.CREATE.{BARS_STREAM}")).await?;

    // Deleting or editing a stream: refused to the agent and to every
    // service's user; the stream stays with every message.
    let before = admin_js.get_stream(EVENTS_STREAM).await?.info().await?.clone();
    let mut attempts = 0;
    for user in [
        AGENT,
        "backbeat-pulse",
        "backbeat-ingest",
        "backbeat-processor",
        "backbeat-query",
    ] {
        let (client, errors) = connect_as(&stack.server, user).await?;
        let mut js = jetstream::new(client);
        js.set_timeout(REFUSED_WAIT);
        let deleted = js.delete_stream(EVENTS_STREAM).await;
        assert!(deleted.is_err(), "{user} deleted {EVENTS_STREAM}");
        wait_for_violation(&errors, &format!("$JS.API.STREAM.DELETE.{EVENTS_STREAM}")).await?;
        let mut edited = backbeat_service::streams::events_config(backbeat_service::streams::StreamOptions::default());
        edited.max_messages = 10;
        let updated = js.update_stream(edited).await;
        assert!(updated.is_err(), "{user} edited {EVENTS_STREAM}");
        wait_for_violation(&errors, &format!("$JS.API.STREAM.UPDATE.{EVENTS_STREAM}")).await?;
        attempts += 2;
    }
    let after = admin_js.get_stream(EVENTS_STREAM).await?.info().await?.clone();
    assert_eq!(
        after.state.first_sequence, before.state.first_sequence,
        "the stream lost messages"
    );
    assert!(after.state.messages >= before.state.messages);
    assert_eq!(
        after.config.max_messages, before.config.max_messages,
        "the stream's settings were edited"
    );
    record(
        "delete or edit BACKBEAT_EVENTS with an agent's or a service's credentials",
        attempts,
        "5 users × (STREAM.DELETE, STREAM.UPDATE): each a publish violation; the stream keeps every message".into(),
    )?;

    // Pulling from the processor's durable consumer (its default --name):
    // refused, so an agent cannot take the processor's messages from it.
    let processor_next = format!("$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.backbeat-processor");
    agent
        .publish_with_reply(processor_next.clone(), agent.new_inbox(), r#"{"batch":1}"#.into())
        .await?;
    wait_for_violation(&agent_errors, &processor_next).await?;
    record(
        "an agent pulls from the processor's durable consumer",
        1,
        format!("{processor_next}: publish violation"),
    )?;

    // The pulse's other doors: the raft listener without the group secret
    // and the tempo endpoint without the admin token answer 401 (both
    // compared in constant time: pulse/src/auth.rs, service/src/secret.rs).
    let raft_port = stack.raft_port;
    let pulse_port = stack.pulse_port;
    let (raft, tempo) = tokio::task::spawn_blocking(move || {
        (
            http_post(
                raft_port,
                "/raft/vote",
                "application/json",
                r#"{"vote":{"leader_id":{"term":99,"node_id":9},"committed":false},"last_log_id":null}"#,
            ),
            http_post(pulse_port, "/api/v1/tempo", "application/json", r#"{"bpm":610}"#),
        )
    })
    .await?;
    assert_eq!(
        raft.as_ref().map(|(status, _)| *status),
        Some(401),
        "raft without the secret: {raft:?}"
    );
    assert_eq!(
        tempo.as_ref().map(|(status, _)| *status),
        Some(401),
        "tempo without the token: {tempo:?}"
    );
    record(
        "a raft vote without the group secret; a tempo change without the token",
        2,
        "raft /raft/vote: 401; /api/v1/tempo: 401".into(),
    )?;

    // The admin may: the refusals above are the permissions' doing.
    stack.pulse.signal(backbeat_tests::Signal::Term)?;
    stack.pulse.wait_exit(TIMEOUT)?;
    admin_js.delete_stream(REJECTS_STREAM).await?;
    assert!(admin_js.get_stream(REJECTS_STREAM).await.is_err());
    Ok(())
}

/// A JetStream publish of a marked payload on `subject` with the agent's
/// credentials: no acknowledgement, a publish violation, nothing stored.
async fn agent_js_timeout_publish(
    agent_js: &jetstream::Context,
    errors: &Arc<Mutex<Vec<String>>>,
    admin_js: &jetstream::Context,
    subject: &str,
    stream: &str,
    marker: &str,
) -> anyhow::Result<()> {
    let payload = format!(r#"{{"type":"{marker}"}}"#);
    let ack = tokio::time::timeout(REFUSED_WAIT, async {
        agent_js.publish(subject.to_string(), payload.into()).await?.await
    })
    .await;
    assert!(
        !matches!(ack, Ok(Ok(_))),
        "the agent's {marker} on {subject} was acknowledged"
    );
    wait_for_violation(errors, subject).await?;
    assert_eq!(
        stored_with(admin_js, stream, subject, marker).await?,
        0,
        "the agent's {marker} was stored on {subject}"
    );
    Ok(())
}
