//! Reading source files into columns: CSV and NDJSON as text, Parquet as
//! typed columns, each row with its line number.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path as FsPath;

use polars::prelude::*;
use serde_json::Value;

use super::CsvOptions;
use crate::error::{Error, Result};

/// One file read into columns: raw text values (CSV, NDJSON) or typed
/// columns (Parquet), with the line number of each row.
pub(super) struct RawFile {
    pub name: String,
    pub frame: DataFrame,
    /// The 1-based line (CSV, NDJSON) or row number (Parquet) of each row.
    pub lines: Vec<u64>,
    /// Rows that could not even be split into fields: (line, reason, text).
    pub broken: Vec<(u64, String, String)>,
}

impl RawFile {
    /// Builds a file of text columns, one value per accepted line.
    fn from_text_columns(
        name: &str,
        names: &[String],
        columns: Vec<Vec<Option<String>>>,
        lines: Vec<u64>,
        broken: Vec<(u64, String, String)>,
    ) -> Result<Self> {
        let series: Vec<Column> = names
            .iter()
            .zip(columns)
            .map(|(column, values)| Column::new(column.as_str().into(), values))
            .collect();
        Ok(RawFile {
            name: name.to_string(),
            frame: DataFrame::new(lines.len(), series)?,
            lines,
            broken,
        })
    }
}

/// Reads a source file from a local path or an object-store URL.
pub(super) fn read_source(file: &str) -> Result<bytes::Bytes> {
    if let Some(rest) = file.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').ok_or_else(|| {
            Error::Config(format!("invalid URL {file}: expected s3://BUCKET/KEY"))
        })?;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| Error::Config(format!("cannot open {file}: {e}")))?;
        let path = object_store::path::Path::parse(key)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            use object_store::ObjectStoreExt;
            match store.get(&path).await {
                Ok(result) => Ok(result.bytes().await?),
                Err(object_store::Error::NotFound { .. }) => {
                    Err(Error::Input(format!("file {file} not found")))
                }
                Err(e) => Err(Error::Input(format!("cannot read {file}: {e}"))),
            }
        });
    }
    if let Some((scheme, _)) = file.split_once("://") {
        if scheme != "file" {
            return Err(Error::Config(format!(
                "unsupported URL {file}: files can be local paths, file:// or s3:// URLs"
            )));
        }
    }
    let path = file.strip_prefix("file://").unwrap_or(file);
    if FsPath::new(path).is_dir() {
        return Err(Error::Input(format!(
            "{file} is a folder; name the files in it, e.g. {}/*.parquet",
            file.trim_end_matches('/')
        )));
    }
    std::fs::read(FsPath::new(path))
        .map(bytes::Bytes::from)
        .map_err(|e| Error::Input(format!("cannot read {file}: {e}")))
}

pub(super) fn read_csv(name: &str, bytes: &[u8], options: &CsvOptions) -> Result<RawFile> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(options.delimiter)
        .has_headers(false)
        .flexible(true)
        .quoting(options.quote.is_some())
        .quote(options.quote.unwrap_or(b'"'))
        .from_reader(bytes);
    let ends_with_newline = bytes.ends_with(b"\n");
    let mut records = reader.byte_records();
    let mut header: Vec<String> = Vec::new();
    let mut columns: Vec<Vec<Option<String>>> = Vec::new();
    let mut lines = Vec::new();
    let mut broken = Vec::new();
    let mut width = None;

    let utf8 = |field: &[u8], line: u64| -> Result<String> {
        String::from_utf8(field.to_vec()).map_err(|_| {
            Error::Input(format!(
                "file {name} line {line} is not valid UTF-8 text; is it really a CSV file?"
            ))
        })
    };

    let mut pending: Option<(u64, csv::ByteRecord)> = None;
    loop {
        let next = records.next();
        let record = match next {
            None => None,
            Some(Ok(record)) => Some(record),
            Some(Err(e)) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                return Err(Error::Input(format!(
                    "file {name} line {line}: invalid CSV: {e}"
                )));
            }
        };
        // Each record is handled once the next one is known, so that the
        // last record can be recognised and checked for truncation.
        if let Some((line, current)) = pending.take() {
            let is_last = record.is_none();
            if width.is_none() {
                width = Some(current.len());
                if options.has_header {
                    header = current
                        .iter()
                        .map(|f| utf8(f, line).map(|s| s.trim().to_string()))
                        .collect::<Result<_>>()?;
                    check_header(name, &header)?;
                    columns = vec![Vec::new(); header.len()];
                    pending = record.map(|r| (r.position().map(|p| p.line()).unwrap_or(0), r));
                    if pending.is_none() {
                        break;
                    }
                    continue;
                }
                header = (1..=current.len()).map(|i| format!("column_{i}")).collect();
                columns = vec![Vec::new(); header.len()];
            }
            let expected = header.len();
            if current.len() != expected {
                if is_last && !ends_with_newline && current.len() < expected {
                    return Err(Error::Input(format!(
                        "file {name} looks truncated: its last line {line} has {} of {expected} \
                         fields and no line end",
                        current.len()
                    )));
                }
                // A field with line breaks in a record of the wrong width
                // is a quote that was never closed: it swallowed the lines
                // after it, so they cannot be quarantined one by one.
                let spans_lines = current.iter().any(|f| f.contains(&b'\n'));
                if spans_lines && options.quote.is_some() {
                    return Err(Error::Input(format!(
                        "file {name} line {line}: a quoted field opened on this line is never \
                         closed, so the following lines were read into it; fix the quote or \
                         pass --quote none"
                    )));
                }
                let text = current
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect::<Vec<_>>();
                broken.push((
                    line,
                    format!("line has {} fields, expected {expected}", current.len()),
                    serde_json::to_string(&text)?,
                ));
            } else {
                for (column, field) in columns.iter_mut().zip(current.iter()) {
                    let value = utf8(field, line)?;
                    column.push(if value.is_empty() { None } else { Some(value) });
                }
                lines.push(line);
            }
        }
        match record {
            Some(record) => {
                let line = record.position().map(|p| p.line()).unwrap_or(0);
                pending = Some((line, record));
            }
            None => break,
        }
    }
    if header.is_empty() {
        return Err(Error::Input(format!("file {name} has no CSV header line")));
    }
    RawFile::from_text_columns(name, &header, columns, lines, broken)
}

fn check_header(name: &str, header: &[String]) -> Result<()> {
    let mut seen = HashMap::new();
    for (index, column) in header.iter().enumerate() {
        if column.is_empty() {
            return Err(Error::Input(format!(
                "file {name} line 1: column {} has an empty name; name every column in the header \
                 or pass --no-header",
                index + 1
            )));
        }
        if let Some(first) = seen.insert(column.as_str(), index) {
            return Err(Error::Input(format!(
                "file {name} line 1: column name `{column}` appears twice (columns {} and {})",
                first + 1,
                index + 1
            )));
        }
    }
    Ok(())
}

pub(super) fn read_parquet(name: &str, bytes: bytes::Bytes) -> Result<RawFile> {
    if bytes.len() < 12 || !bytes.starts_with(b"PAR1") {
        return Err(Error::Input(format!(
            "file {name} is not a Parquet file: it does not start with the Parquet magic bytes"
        )));
    }
    if !bytes.ends_with(b"PAR1") {
        return Err(Error::Input(format!(
            "file {name} is truncated: it does not end with the Parquet footer"
        )));
    }
    let frame = ParquetReader::new(Cursor::new(bytes.to_vec()))
        .finish()
        .map_err(|e| Error::Input(format!("cannot read Parquet file {name}: {e}")))?;
    let lines = (1..=frame.height() as u64).collect();
    Ok(RawFile {
        name: name.to_string(),
        frame,
        lines,
        broken: Vec::new(),
    })
}

pub(super) fn read_ndjson(name: &str, bytes: &[u8]) -> Result<RawFile> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Error::Input(format!(
            "file {name} is not valid UTF-8 text (at byte {}); is it really NDJSON?",
            e.valid_up_to()
        ))
    })?;
    let ends_with_newline = text.ends_with('\n');
    let mut names: Vec<String> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    let mut columns: Vec<Vec<Option<String>>> = Vec::new();
    let mut lines = Vec::new();
    let mut broken = Vec::new();
    let all: Vec<&str> = text.lines().collect();
    for (i, line_text) in all.iter().enumerate() {
        let line = i as u64 + 1;
        if line_text.trim().is_empty() {
            continue;
        }
        let object = match serde_json::from_str::<Value>(line_text) {
            Ok(Value::Object(object)) => object,
            Ok(_) => {
                broken.push((
                    line,
                    "line is not a JSON object".to_string(),
                    line_text.to_string(),
                ));
                continue;
            }
            Err(e) => {
                if i + 1 == all.len() && !ends_with_newline && e.is_eof() {
                    return Err(Error::Input(format!(
                        "file {name} looks truncated: its last line {line} ends inside a JSON value"
                    )));
                }
                // serde_json's message ends with the position inside the
                // text it parsed, which is this one line.
                let message = e.to_string();
                let message = message.split(" at line ").next().unwrap_or(&message);
                broken.push((
                    line,
                    format!("line is not valid JSON at column {}: {message}", e.column()),
                    line_text.to_string(),
                ));
                continue;
            }
        };
        let row = lines.len();
        for (key, value) in object {
            let column = *index_of.entry(key.clone()).or_insert_with(|| {
                names.push(key.clone());
                columns.push(vec![None; row]);
                columns.len() - 1
            });
            let value = match value {
                Value::Null => None,
                Value::String(s) if s.is_empty() => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            };
            columns[column].push(value);
        }
        lines.push(line);
        for column in columns.iter_mut() {
            if column.len() < lines.len() {
                column.push(None);
            }
        }
    }
    if lines.is_empty() {
        return Err(match broken.first() {
            Some((line, reason, _)) => Error::Input(format!(
                "file {name} has no JSON object on any line; line {line}: {reason}. Is it really \
                 NDJSON?"
            )),
            None => Error::Input(format!("file {name} has no JSON records")),
        });
    }
    RawFile::from_text_columns(name, &names, columns, lines, broken)
}
