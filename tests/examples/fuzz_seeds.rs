//! Writes the fuzz targets' seed corpora (`fuzz/corpus/{target}/`) from the
//! tests' own inputs: the conformance logs (`tests/conformance/`), the golden
//! scenarios (`tests/golden/*/events.jsonl`), the ingest corpus of bad claims
//! (`ingest/tests/it/corpus.rs`) and the documents of the schema contract
//! tests (`schemas/tests/contract/differential.rs`, `schemas/src/canonical.rs`).
//! Run by `fuzz/seed.sh`; each input goes in the header form its target reads
//! (`fuzz/src/checks.rs`). Files are named by a hash of their bytes, so
//! running it again adds nothing twice.
//!
//! `cargo run -p backbeat-tests --example fuzz_seeds -- REPO_ROOT`

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use backbeat_fold::{Fold, FoldConfig};
use backbeat_schemas::names::{parse_subject, SubjectKind};
use backbeat_schemas::LogEntry;

/// Bar lengths, lateness and task time-to-live as `checks::fold_config`
/// reads them from a selector byte (kept in step with `fuzz/src/checks.rs`).
const BAR_LENGTHS: [u64; 8] = [1, 2, 3, 4, 8, 16, 120, 1 << 40];
const LATENESS: [u64; 4] = [0, 1, 2, 5];
const TASK_TTLS: [u64; 4] = [10, 0, 1, 3];

/// A log of the tests: its fold config and its lines.
struct Log {
    name: String,
    config: FoldConfig,
    text: String,
}

#[derive(Default)]
struct Seeds {
    targets: std::collections::BTreeMap<&'static str, BTreeSet<Vec<u8>>>,
}

impl Seeds {
    fn add(&mut self, target: &'static str, input: Vec<u8>) {
        self.targets.entry(target).or_default().insert(input);
    }
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let logs = read_logs(&root)?;
    let mut seeds = Seeds::default();
    let mut documents = BTreeSet::new();

    for log in &logs {
        let selector = selector(&log.config);
        // The whole log, and its first lines alone (a short input mutates faster).
        seeds.add("log_lines", [&[selector][..], log.text.as_bytes()].concat());
        let head: String = log.text.lines().take(6).map(|l| format!("{l}\n")).collect();
        seeds.add("log_lines", [&[selector][..], head.as_bytes()].concat());

        let mut fold = Fold::new(log.config);
        let mut reports = Vec::new();
        let mut claims = Vec::new();
        for (index, line) in log.text.lines().enumerate() {
            let Some(entry) = LogEntry::parse_line(line, index as u64 + 1)? else {
                continue;
            };
            fold.apply(entry.seq, &entry.subject, &entry.payload, &mut reports);
            // A checkpoint every few events, and at the end.
            if index % 8 == 7 {
                seeds.add("checkpoint", fold.to_checkpoint());
            }
            let Some((cluster, kind)) = parse_subject(&entry.subject) else {
                continue;
            };
            documents.insert(entry.payload.clone());
            match kind {
                SubjectKind::Beat => {
                    let input = [&[selector][..], cluster.as_bytes(), b"\n", &entry.payload].concat();
                    seeds.add("beat", input.clone());
                    seeds.add("fast_paths", input);
                    if let Some(deadline) = member(&entry.payload, "deadline_at") {
                        seeds.add("hlc_timestamp", deadline);
                    }
                }
                _ => {
                    seeds.add("claim", entry.payload.clone());
                    seeds.add("fast_paths", [&[selector, b'\n'][..], &entry.payload].concat());
                    claims.push((cluster.to_string(), entry.payload.clone()));
                }
            }
            if let Some(hlc) = member(&entry.payload, "hlc") {
                seeds.add("hlc_timestamp", hlc);
            }
        }
        seeds.add("checkpoint", fold.to_checkpoint());
        // The log's claims as an HTTP batch (CRLF line ends and a blank line
        // too), and the first alone.
        if let Some((cluster, first)) = claims.first() {
            let batch: Vec<u8> = claims
                .iter()
                .take(12)
                .flat_map(|(_, claim)| [&claim[..], b"\r\n"].concat())
                .chain(b"\n".iter().copied())
                .collect();
            for selector in [0u8, 0b0000_0101, 0b0010_1110] {
                seeds.add(
                    "gateway",
                    gateway_input(selector, cluster, "application/x-ndjson", None, &batch),
                );
            }
            seeds.add("gateway", gateway_input(0, cluster, "application/json", None, first));
            seeds.add(
                "gateway",
                gateway_input(1, cluster, "application/json", Some(first.len()), first),
            );
        }
    }

    // The contract tests' documents: claims and beats (cluster c1, L = 8)
    // written in other ways, and the ingest corpus of bad claims.
    let sources = [
        "schemas/tests/contract/differential.rs",
        "schemas/src/canonical.rs",
        "schemas/src/json/mod.rs",
        "ingest/tests/it/corpus.rs",
    ];
    for source in sources {
        let text = std::fs::read_to_string(root.join(source))?;
        for literal in raw_strings(&text) {
            documents.insert(literal.into_bytes());
        }
    }
    let good = r#"{"type":"backbeat.statusclaim.v1","agent_id":"a1","task_id":"build:1","beat_index":3,"state":"executing","beats_left":3,"progress":0.5,"hlc":"f481c:0000:0001"}"#;
    let corpus = std::fs::read_to_string(root.join("ingest/tests/it/corpus.rs"))?;
    let mut bad_claims = Vec::new();
    for (from, to) in replacements(&corpus) {
        if good.contains(&from) {
            bad_claims.push(good.replacen(&from, &to, 1).into_bytes());
        }
    }
    for bad in &bad_claims {
        seeds.add("claim", bad.clone());
        seeds.add("fast_paths", [&[3u8, b'\n'][..], bad].concat());
        documents.insert(bad.clone());
    }
    let batch: Vec<u8> = bad_claims.iter().flat_map(|c| [&c[..], b"\n"].concat()).collect();
    seeds.add(
        "gateway",
        gateway_input(0, "alpha", "application/x-ndjson", None, &batch),
    );
    seeds.add("gateway", gateway_input(0, "a$b", "application/x-ndjson", None, &batch));
    seeds.add(
        "gateway",
        gateway_input(0, "alpha", "application/json", Some(1 << 30), good.as_bytes()),
    );

    for document in &documents {
        seeds.add("json", document.clone());
        let text = String::from_utf8_lossy(document);
        if text.contains("statusclaim") {
            seeds.add("claim", document.clone());
            seeds.add("fast_paths", [&[4u8, b'\n'][..], document].concat());
        }
        if text.contains("beatframe") {
            // The contract tests' beats are of cluster c1, L = 8 (selector 4).
            let input = [&[4u8][..], b"c1\n", document].concat();
            seeds.add("beat", input.clone());
            seeds.add("fast_paths", input);
        }
    }
    for hlc in ["0:0000:0000", "ffffffffffff:ffff:ffff", "1:0000:000", "01:0000:0000"] {
        seeds.add("hlc_timestamp", hlc.into());
    }
    // Clock operations: 16 bytes each (see `checks::hlc_timestamp`).
    let mut ops = Vec::new();
    for (i, wall) in [1_000u64, 900, 5_000, u64::MAX, 0].into_iter().enumerate() {
        ops.extend_from_slice(&wall.to_le_bytes());
        ops.push(i as u8);
        ops.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }
    seeds.add("hlc_timestamp", ops);

    for (target, inputs) in &seeds.targets {
        let dir = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir)?;
        for input in inputs {
            std::fs::write(dir.join(name(input)), input)?;
        }
        println!("{target}: {} seeds", inputs.len());
    }
    Ok(())
}

fn selector(config: &FoldConfig) -> u8 {
    let position = |values: &[u64], value: u64, what: &str| {
        values
            .iter()
            .position(|v| *v == value)
            .unwrap_or_else(|| panic!("{what} {value} is not one a selector picks")) as u8
    };
    position(&BAR_LENGTHS, config.bar_length, "bar length")
        | position(&LATENESS, config.lateness, "lateness") << 3
        | position(&TASK_TTLS, config.task_ttl, "task ttl") << 5
}

fn gateway_input(selector: u8, cluster: &str, content_type: &str, length: Option<usize>, body: &[u8]) -> Vec<u8> {
    let length = length.map_or(String::new(), |l| l.to_string());
    [
        &[selector][..],
        format!("{cluster}\t{content_type}\t{length}\n").as_bytes(),
        body,
    ]
    .concat()
}

/// Every log of the tests with its fold config (from its `args`).
fn read_logs(root: &Path) -> anyhow::Result<Vec<Log>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root.join("tests/conformance"))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".log.jsonl") {
            found.push((
                stem.to_string(),
                path.clone(),
                path.with_file_name(format!("{stem}.args")),
            ));
        }
    }
    for entry in std::fs::read_dir(root.join("tests/golden"))? {
        let dir = entry?.path();
        if dir.join("events.jsonl").exists() {
            let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
            found.push((name, dir.join("events.jsonl"), dir.join("args")));
        }
    }
    found.sort();
    let mut logs = Vec::new();
    for (name, log, args) in found {
        let args = std::fs::read_to_string(&args).unwrap_or_default();
        logs.push(Log {
            config: config_of(&args)?,
            text: std::fs::read_to_string(&log)?,
            name,
        });
    }
    anyhow::ensure!(!logs.is_empty(), "no logs under {}", root.display());
    for log in &logs {
        eprintln!("seeding from {}", log.name);
    }
    Ok(logs)
}

/// The fold config of a scenario's `args` (`--bar-length 4 --lateness 2` ...).
fn config_of(args: &str) -> anyhow::Result<FoldConfig> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let value = |flag: &str| -> anyhow::Result<Option<u64>> {
        match words.iter().position(|w| *w == flag) {
            Some(at) => Ok(Some(words.get(at + 1).copied().unwrap_or_default().parse()?)),
            None => Ok(None),
        }
    };
    let mut config = FoldConfig::with_bar_length(value("--bar-length")?.unwrap_or(120));
    if let Some(lateness) = value("--lateness")? {
        config.lateness = lateness;
    }
    if let Some(max_jump) = value("--max-jump")? {
        config.max_jump = max_jump;
    }
    if let Some(ttl) = value("--task-ttl")? {
        config.task_ttl = ttl;
    }
    Ok(config)
}

/// A top-level string member's text, found naively (seeds only).
fn member(payload: &[u8], name: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(payload).ok()?;
    let start = text.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let end = start + text[start..].find('"')?;
    Some(text.as_bytes()[start..end].to_vec())
}

/// The text of every `r#"..."#` literal in a Rust source.
fn raw_strings(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("r#\"") {
        rest = &rest[start + 3..];
        let Some(end) = rest.find("\"#") else { break };
        found.push(rest[..end].to_string());
        rest = &rest[end + 2..];
    }
    found
}

/// The `with(r#"from"#, r#"to"#)` replacements of the ingest corpus.
fn replacements(source: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("with(") {
        rest = &rest[start + 5..];
        let call = &rest[..rest.find(")\n").unwrap_or(rest.len()).min(rest.len())];
        if let [from, to] = raw_strings(call).as_slice() {
            found.push((from.clone(), to.clone()));
        }
    }
    found
}

/// A file name from the input's bytes (the same input, the same name).
fn name(input: &[u8]) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    input.hash(&mut hasher);
    let mut second = std::hash::DefaultHasher::new();
    (input.len(), input.iter().rev().collect::<Vec<_>>()).hash(&mut second);
    format!("seed-{:016x}{:016x}", hasher.finish(), second.finish())
}
