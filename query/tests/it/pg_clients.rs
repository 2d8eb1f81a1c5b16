//! Real PostgreSQL clients, unchanged, against a live `serve --pg-listen`:
//! psql (`\dt`, `\d bar_reports`, `\l`, queries) and psycopg (a Python script,
//! `psycopg_client.py`), and TLS with psql. `deploy/test.sh` installs them when missing
//! (`deploy/install-psql.sh`, `deploy/install-psycopg.sh`); a test fails,
//! never skips, when one is absent.

use std::process::{Command, Output};

use crate::pg::Fixture;

fn run(command: &mut Command, what: &str, install: &str) -> Output {
    match command.output() {
        Ok(output) => output,
        Err(e) => panic!("{what} could not run ({e}): install it with `bash deploy/{install}`"),
    }
}

#[tokio::test]
async fn psql_lists_and_describes_the_tables_and_runs_queries() {
    let fixture = Fixture::start(&[]).await;
    let port = fixture.server.pg_port.unwrap().to_string();
    let output = run(
        Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port])
            .args(["-U", "backbeat", "-d", "backbeat"])
            .args(["-c", r"\dt", "-c", r"\d bar_reports", "-c", r"\l"])
            .args(["-c", "SELECT beat_index, hlc_time FROM beats ORDER BY beat_index"])
            .env("PGCONNECT_TIMEOUT", "30")
            .stdin(std::process::Stdio::null()),
        "psql",
        "install-psql.sh",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "psql failed: {stderr}\n{stdout}\n{}",
        fixture.server.log_tail()
    );
    // \dt: the four tables.
    for table in ["bar_reports", "beats", "claims", "rejects"] {
        assert!(stdout.contains(table), "{table} not listed:\n{stdout}");
    }
    // \d bar_reports: its columns and their PostgreSQL types.
    assert!(stdout.contains("Table \"public.bar_reports\""), "{stdout}");
    for column in [
        "window_start",
        "timestamp with time zone",
        "agents_reporting",
        "bigint",
        "issues",
    ] {
        assert!(stdout.contains(column), "{column} not described:\n{stdout}");
    }
    // \l: the database.
    assert!(stdout.contains("List of databases"), "{stdout}");
    // The query.
    assert!(stdout.contains("1970-01-01 00:00:01"), "{stdout}");
    assert!(stdout.contains("(2 rows)"), "{stdout}");

    // Without a certificate an SSL request is answered N: libpq's default
    // (sslmode=prefer) goes on in plain text, as above; sslmode=require stops.
    let output = psql(&port, "require", &["-c", "SELECT 1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server does not support SSL"), "{stderr}");
}

/// psql with `sslmode` against the pg-wire port: its output.
fn psql(port: &str, sslmode: &str, args: &[&str]) -> Output {
    run(
        Command::new("psql")
            .arg("-X")
            .arg(format!(
                "host=127.0.0.1 port={port} user=backbeat dbname=backbeat sslmode={sslmode}"
            ))
            .args(args)
            .env("PGCONNECT_TIMEOUT", "30")
            .stdin(std::process::Stdio::null()),
        "psql",
        "install-psql.sh",
    )
}

#[tokio::test]
async fn psql_gets_tls_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl",
        "install-psql.sh",
    );
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let fixture = Fixture::start(&[
        "--pg-tls-cert",
        cert.to_str().unwrap(),
        "--pg-tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let port = fixture.server.pg_port.unwrap().to_string();
    let output = psql(
        &port,
        "require",
        &["-c", r"\conninfo", "-c", "SELECT count(*) FROM beats"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        fixture.server.log_tail()
    );
    assert!(stdout.contains("SSL connection"), "{stdout}");
    assert!(stdout.contains(" 2\n"), "{stdout}");
}

#[tokio::test]
async fn psycopg_prepares_statements_and_reads_native_types() {
    let fixture = Fixture::start(&[]).await;
    let port = fixture.server.pg_port.unwrap().to_string();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/psycopg_client.py");
    let output = run(
        Command::new("python3").arg(&script).arg(&port),
        "python3",
        "install-psycopg.sh",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'psycopg'"),
        "psycopg is missing: install it with `bash deploy/install-psycopg.sh`"
    );
    assert!(
        output.status.success() && stdout.contains("psycopg: ok"),
        "{stderr}\n{stdout}\n{}",
        fixture.server.log_tail()
    );
}
