//! Corrosion's subscription stream: NDJSON events, one per line, cut into HTTP chunks
//! anywhere (Corrosion flushes every 10 ms or 64 KiB).
//!
//! ```text
//! {"columns":["id","vip"]}
//! {"row":[1,["web","198.18.0.10"]]}
//! {"eoq":{"time":8e-8,"change_id":0}}
//! {"change":["update",1,["web","198.18.0.11"],1]}
//! {"error":"..."}
//! ```

use serde::Deserialize;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

#[derive(Debug, Deserialize)]
struct Eoq {
    #[serde(default)]
    change_id: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Raw {
    Columns(Vec<String>),
    Row((u64, Vec<Value>)),
    Eoq(Eoq),
    Change((ChangeKind, u64, Vec<Value>, u64)),
    Error(String),
}

/// One event of a subscription.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Columns(Vec<String>),
    /// A row of the initial result: (Corrosion's row id, values in column order).
    Row(u64, Vec<Value>),
    /// End of the initial result; `change_id` is where changes continue from.
    Eoq(Option<u64>),
    /// A change after the initial result; every column's value, deletes included.
    Change {
        kind: ChangeKind,
        rowid: u64,
        values: Vec<Value>,
        change_id: u64,
    },
    /// Corrosion gave up on the subscription (the stream ends after it).
    Error(String),
}

pub fn parse(line: &str) -> Result<Event, String> {
    let raw: Raw = serde_json::from_str(line).map_err(|e| {
        let shown: String = line.chars().take(120).collect();
        format!("not a subscription event ({e}): {shown}")
    })?;
    Ok(match raw {
        Raw::Columns(c) => Event::Columns(c),
        Raw::Row((rowid, values)) => Event::Row(rowid, values),
        Raw::Eoq(e) => Event::Eoq(e.change_id),
        Raw::Change((kind, rowid, values, change_id)) => Event::Change {
            kind,
            rowid,
            values,
            change_id,
        },
        Raw::Error(e) => Event::Error(e),
    })
}

/// Reassembles lines from chunks.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

/// A line longer than this is not an event of ours: the stream is broken.
pub const MAX_LINE: usize = 4 << 20;

impl Lines {
    /// The complete lines `chunk` finishes (without their newline; empty lines dropped).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for piece in chunk.split_inclusive(|b| *b == b'\n') {
            self.partial.extend_from_slice(piece);
            if self.partial.last() == Some(&b'\n') {
                let line = std::mem::take(&mut self.partial);
                let text = std::str::from_utf8(&line)
                    .map_err(|_| "a subscription line is not UTF-8".to_owned())?
                    .trim();
                if !text.is_empty() {
                    out.push(text.to_owned());
                }
            } else if self.partial.len() > MAX_LINE {
                return Err(format!(
                    "a subscription line is longer than {MAX_LINE} bytes"
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_event_kind_parses() {
        assert_eq!(
            parse(r#"{"columns":["id","vip"]}"#),
            Ok(Event::Columns(vec!["id".into(), "vip".into()]))
        );
        assert_eq!(
            parse(r#"{"row":[1,["web",80,null,1.5]]}"#),
            Ok(Event::Row(
                1,
                vec![json!("web"), json!(80), json!(null), json!(1.5)]
            ))
        );
        assert_eq!(
            parse(r#"{"eoq":{"time":8e-8,"change_id":0}}"#),
            Ok(Event::Eoq(Some(0)))
        );
        assert_eq!(parse(r#"{"eoq":{"time":8e-8}}"#), Ok(Event::Eoq(None)));
        assert_eq!(
            parse(r#"{"change":["delete",5,["ham"],3]}"#),
            Ok(Event::Change {
                kind: ChangeKind::Delete,
                rowid: 5,
                values: vec![json!("ham")],
                change_id: 3
            })
        );
        assert_eq!(
            parse(r#"{"error":"could not catch up"}"#),
            Ok(Event::Error("could not catch up".into()))
        );
        for bad in [
            "",
            "{",
            r#"{"change":[2,"insert",["x"],1]}"#,
            r#"{"row":["x",[]]}"#,
            r#"{"surprise":1}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_survive_any_chunking() -> Result<(), String> {
        let text = b"{\"columns\":[\"a\"]}\n{\"row\":[1,[\"x\"]]}\n\n{\"eoq\":{\"change_id\":0}}\n";
        for cut in 0..text.len() {
            let mut lines = Lines::default();
            let mut got = lines.push(&text[..cut])?;
            got.extend(lines.push(&text[cut..])?);
            assert_eq!(got.len(), 3, "cut at {cut}: {got:?}");
            assert_eq!(got[1], "{\"row\":[1,[\"x\"]]}");
        }
        let mut lines = Lines::default();
        assert!(
            lines.push(b"{\"col").is_ok_and(|l| l.is_empty()),
            "no newline yet"
        );
        assert!(lines.push(&[0xff, b'\n']).is_err(), "not UTF-8");
        Ok(())
    }
}
