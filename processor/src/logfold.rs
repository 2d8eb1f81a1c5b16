//! Folding a SPEC §7 log file: the offline twin of the live run.

use std::io::{BufRead, Write};

use backbeat_schemas::logfile::{strip_line_end, LogLineError};
use backbeat_schemas::LogEntry;

use backbeat_fold::{Fold, FoldConfig};

/// Why a log file could not be folded: the input (unreadable, or a line that
/// is not a log line: an error of the file, SPEC §7) or the output.
#[derive(Debug, thiserror::Error)]
pub enum FoldLogError {
    #[error("reading line {line}")]
    Read {
        line: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Line(#[from] LogLineError),
    #[error("writing the reports")]
    Write(#[source] std::io::Error),
}

/// Folds the log read from `input` and writes each BarReport to `output` as one
/// JSON line (SPEC §2 serialization), nothing else. A line that is not a log
/// line stops the fold with an error naming it.
///
/// Lines are read into buffers reused from line to line; a line written the
/// way `export` writes it is read straight off its bytes
/// ([`LogEntry::parse_line_into`]).
pub fn fold_log(config: FoldConfig, mut input: impl BufRead, mut output: impl Write) -> Result<u64, FoldLogError> {
    let mut fold = Fold::new(config);
    let mut reports = Vec::new();
    let mut written = 0u64;
    let (mut line, mut subject, mut payload) = (Vec::new(), String::new(), Vec::new());
    let mut line_number = 0u64;
    loop {
        line.clear();
        line_number += 1;
        let read = input.read_until(b'\n', &mut line);
        if read.map_err(|source| FoldLogError::Read {
            line: line_number,
            source,
        })? == 0
        {
            break;
        }
        // What `BufRead::lines` gives: without its "\n" or "\r\n".
        let text = std::str::from_utf8(strip_line_end(&line)).map_err(|_| FoldLogError::Read {
            line: line_number,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"),
        })?;
        let Some(seq) = LogEntry::parse_line_into(text, line_number, &mut subject, &mut payload)? else {
            continue;
        };
        fold.apply(seq, &subject, &payload, &mut reports);
        for report in reports.drain(..) {
            serde_json::to_writer(&mut output, &report).map_err(|e| FoldLogError::Write(e.into()))?;
            output.write_all(b"\n").map_err(FoldLogError::Write)?;
            written += 1;
        }
    }
    output.flush().map_err(FoldLogError::Write)?;
    Ok(written)
}
