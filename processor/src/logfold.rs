//! Folding a SPEC §7 log file: the offline twin of the live run.

use std::io::{BufRead, Write};

use anyhow::Context as _;
use backbeat_schemas::LogEntry;

use crate::fold::{Fold, FoldConfig};

/// Folds the log read from `input` and writes each BarReport to `output` as one
/// JSON line (SPEC §2 serialization), nothing else. A line that is not a log
/// line stops the fold with an error naming it.
pub fn fold_log(config: FoldConfig, input: impl BufRead, mut output: impl Write) -> anyhow::Result<u64> {
    let mut fold = Fold::new(config);
    let mut reports = Vec::new();
    let mut written = 0u64;
    for (index, line) in input.lines().enumerate() {
        let line_number = index as u64 + 1;
        let line = line.with_context(|| format!("reading line {line_number}"))?;
        let Some(entry) = LogEntry::parse_line(&line, line_number)? else {
            continue;
        };
        fold.apply(entry.seq, &entry.subject, &entry.payload, &mut reports);
        for report in reports.drain(..) {
            serde_json::to_writer(&mut output, &report)?;
            output.write_all(b"\n")?;
            written += 1;
        }
    }
    output.flush()?;
    Ok(written)
}
