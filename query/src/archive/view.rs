//! What the archive holds: its files, and per table and cluster how far
//! (the highest sequence, or for `bar_reports` window, of its files' names).
//! The tail drops what a view says the archive holds, and a query reads a
//! view's files with the tail's rows under one lock, so no row is twice and
//! none is missing.

use std::collections::HashMap;

use object_store::path::Path;

use crate::tables::Table;

/// One Parquet file of the archive, as its path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    pub table: Table,
    pub cluster: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The range the file seals: stream sequences, or windows for `bar_reports`.
    pub from: u64,
    pub to: u64,
    /// The lowest and highest `window_index` of its rows (0, 0 for `rejects`).
    pub window_min: u64,
    pub window_max: u64,
    pub path: Path,
    pub size: u64,
}

impl ArchivedFile {
    /// The path of a file under the archive's prefix.
    pub fn relative_path(&self) -> String {
        format!(
            "{}/cluster_id={}/date={}/{:020}-{:020}_w{}-{}.parquet",
            self.table.name(),
            self.cluster,
            self.date,
            self.from,
            self.to,
            self.window_min,
            self.window_max
        )
    }

    /// Reads a file's place from the parts of its path under the prefix;
    /// `None` for anything else (a position record, a partly written file).
    pub fn parse(parts: &[String], path: Path, size: u64) -> Option<ArchivedFile> {
        let [table, cluster, date, name] = parts else {
            return None;
        };
        let table = *Table::ALL.iter().find(|t| t.name() == table)?;
        let cluster = cluster.strip_prefix("cluster_id=")?.to_string();
        let date = date.strip_prefix("date=")?.to_string();
        let (range, windows) = name.strip_suffix(".parquet")?.split_once("_w")?;
        let (from, to) = range.split_once('-')?;
        let (window_min, window_max) = windows.split_once('-')?;
        let file = ArchivedFile {
            table,
            cluster,
            date,
            from: from.parse().ok()?,
            to: to.parse().ok()?,
            window_min: window_min.parse().ok()?,
            window_max: window_max.parse().ok()?,
            path,
            size,
        };
        (file.from <= file.to && file.window_min <= file.window_max).then_some(file)
    }
}

/// The archive's files and how far each table and cluster is archived.
#[derive(Debug, Clone, Default)]
pub struct ArchiveView {
    files: HashMap<Table, Vec<ArchivedFile>>,
    through: HashMap<Table, HashMap<String, u64>>,
}

impl ArchiveView {
    pub fn add(&mut self, file: ArchivedFile) {
        let clusters = self.through.entry(file.table).or_default();
        let through = clusters.entry(file.cluster.clone()).or_insert(0);
        *through = (*through).max(file.to);
        self.files.entry(file.table).or_default().push(file);
    }

    /// The files of `table`.
    pub fn files(&self, table: Table) -> &[ArchivedFile] {
        self.files.get(&table).map_or(&[], Vec::as_slice)
    }

    /// How far `table` of `cluster` is archived: every row of it at or below
    /// this sequence (for `bar_reports`, window) is in the archive.
    pub fn through(&self, table: Table, cluster: &str) -> Option<u64> {
        self.through.get(&table)?.get(cluster).copied()
    }

    /// Every (table, cluster) archived, with how far.
    pub fn all_through(&self) -> impl Iterator<Item = (Table, &str, u64)> {
        self.through
            .iter()
            .flat_map(|(t, clusters)| clusters.iter().map(|(c, n)| (*t, c.as_str(), *n)))
    }

    /// Files, rows are not known without reading them: files and bytes per table.
    pub fn summary(&self) -> serde_json::Value {
        let tables: serde_json::Map<String, serde_json::Value> = Table::ALL
            .iter()
            .map(|t| {
                let files = self.files(*t);
                let bytes: u64 = files.iter().map(|f| f.size).sum();
                let clusters = self.through.get(t).map_or(0, HashMap::len);
                let value = serde_json::json!({"files": files.len(), "bytes": bytes, "clusters": clusters});
                (t.name().to_string(), value)
            })
            .collect();
        serde_json::Value::Object(tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_says_what_it_holds() {
        let file = ArchivedFile {
            table: Table::Claims,
            cluster: "eu-1".into(),
            date: "2026-12-04".into(),
            from: 3,
            to: 1200,
            window_min: 0,
            window_max: 9,
            path: Path::default(),
            size: 0,
        };
        let relative = file.relative_path();
        assert_eq!(
            relative,
            "claims/cluster_id=eu-1/date=2026-12-04/00000000000000000003-00000000000000001200_w0-9.parquet"
        );
        let parts: Vec<String> = relative.split('/').map(str::to_string).collect();
        assert_eq!(ArchivedFile::parse(&parts, Path::default(), 0), Some(file));
        let mut staged = parts.clone();
        staged[3].push_str("#1");
        assert_eq!(ArchivedFile::parse(&staged, Path::default(), 0), None);
        let mut view = ArchiveView::default();
        let mut parsed = ArchivedFile::parse(&parts, Path::default(), 0).unwrap();
        view.add(parsed.clone());
        (parsed.from, parsed.to) = (1201, 1300);
        view.add(parsed);
        assert_eq!(view.through(Table::Claims, "eu-1"), Some(1300));
        assert_eq!(view.through(Table::Beats, "eu-1"), None);
        assert_eq!(view.files(Table::Claims).len(), 2);
    }
}
