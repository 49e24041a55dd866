//! One value of a row as the parsers see it ([`Cell`]), typed reads of it that say what was
//! found instead, and the quoting that keeps a hostile value to a short single line in a
//! reason or key.

use rusqlite::types::ValueRef;

/// The longest id a row may have ([`super::check_id`]), and so the longest key shown as it is.
pub(super) const MAX_ID_LEN: usize = 128;
const SHOWN_CHARS: usize = 64;

/// One value of a row, borrowed from wherever the row lives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    /// A blob, or text that is not UTF-8.
    Blob(&'a [u8]),
}

impl<'a> From<ValueRef<'a>> for Cell<'a> {
    fn from(v: ValueRef<'a>) -> Self {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Int(i),
            ValueRef::Real(f) => Cell::Real(f),
            ValueRef::Text(t) => std::str::from_utf8(t).map_or(Cell::Blob(t), Cell::Text),
            ValueRef::Blob(b) => Cell::Blob(b),
        }
    }
}

/// A value from a row, quoted (control characters escaped) and shortened, for a reason line.
pub fn show(s: &str) -> String {
    let mut shown: String = s.chars().take(SHOWN_CHARS).collect();
    if shown.len() < s.len() {
        shown.push_str("...");
    }
    format!("{shown:?}")
}

pub(crate) fn found(cell: Cell<'_>) -> String {
    match cell {
        Cell::Null => "NULL".to_owned(),
        Cell::Int(i) => format!("integer {i}"),
        Cell::Real(f) => format!("real {f}"),
        Cell::Text(t) => format!("text {}", show(t)),
        Cell::Blob(b) => format!("a blob or non-UTF-8 text of {} bytes", b.len()),
    }
}

pub(super) fn text<'a>(cell: Cell<'a>, col: &str) -> Result<&'a str, String> {
    match cell {
        Cell::Text(t) => Ok(t),
        other => Err(format!("{col} must be text, found {}", found(other))),
    }
}

/// NULL and the empty string both mean "not set".
pub(super) fn opt_text<'a>(cell: Cell<'a>, col: &str) -> Result<Option<&'a str>, String> {
    match cell {
        Cell::Null | Cell::Text("") => Ok(None),
        other => text(other, col).map(Some),
    }
}

pub(super) fn int(cell: Cell<'_>, col: &str) -> Result<i64, String> {
    match cell {
        Cell::Int(i) => Ok(i),
        other => Err(format!("{col} must be an integer, found {}", found(other))),
    }
}

pub(super) fn ranged(cell: Cell<'_>, col: &str, lo: i64, hi: i64) -> Result<i64, String> {
    let v = int(cell, col)?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{col} {v} is out of range {lo}..={hi}"))
    }
}

pub(super) fn flag(cell: Cell<'_>, col: &str) -> Result<bool, String> {
    match int(cell, col)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(format!("{col} must be 0 or 1, found {v}")),
    }
}

pub(super) fn port(cell: Cell<'_>) -> Result<u16, String> {
    let v = int(cell, "port")?;
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {v} is out of range 1..=65535"))
}

/// The row's key for a [`RejectedRow`]: the id as written when it is plain, else quoted.
pub(crate) fn key_text(cell: Cell<'_>) -> String {
    match cell {
        Cell::Text(t) if t.len() <= MAX_ID_LEN && t.bytes().all(|b| b.is_ascii_graphic()) => {
            t.to_owned()
        }
        Cell::Text(t) => show(t),
        Cell::Int(i) => i.to_string(),
        other => format!("<{}>", found(other)),
    }
}

pub(super) fn arity(cells: &[Cell<'_>], n: usize) -> Result<(), String> {
    if cells.len() == n {
        Ok(())
    } else {
        Err(format!("expected {n} columns, found {}", cells.len()))
    }
}

/// A row's `created_at`: 0 (not known) or Unix seconds.
pub(super) fn created_at(cell: Cell<'_>) -> Result<i64, String> {
    ranged(cell, "created_at", 0, i64::MAX)
}
