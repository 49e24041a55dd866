//! One subscribed table as this agent last saw it: rows by Corrosion's row id, kept in step
//! by the change events, with the change id to resume from.

use std::collections::BTreeMap;

use serde_json::Value;

use super::events::{ChangeKind, Event};

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing visible changed.
    Same,
    /// The table's rows changed.
    Changed,
    /// A change was skipped (its id is not the next one): the table must be read again.
    Gap { expected: u64, got: u64 },
    /// Corrosion ended the subscription with an error.
    Failed(String),
}

#[derive(Debug, Default)]
pub struct Mirror {
    rows: BTreeMap<u64, Vec<Value>>,
    /// Rows of an initial result being received (replaces `rows` at its end).
    incoming: Option<BTreeMap<u64, Vec<Value>>>,
    /// The last change id applied, once the initial result is complete.
    pub last_change: Option<u64>,
    /// The initial result has been received once: the rows are usable.
    pub synced: bool,
}

impl Mirror {
    /// Starts a fresh read of the table (a new subscription): rows arrive, then the end.
    pub fn restart(&mut self) {
        self.incoming = Some(BTreeMap::new());
        self.last_change = None;
    }

    pub fn apply(&mut self, event: Event) -> Step {
        match event {
            Event::Columns(_) => Step::Same,
            Event::Row(rowid, values) => {
                self.incoming
                    .get_or_insert_with(BTreeMap::new)
                    .insert(rowid, values);
                Step::Same
            }
            Event::Eoq(change_id) => {
                self.last_change = Some(change_id.unwrap_or(0));
                // The first complete read is news even if the table is empty.
                let first = !std::mem::replace(&mut self.synced, true);
                match self.incoming.take() {
                    // Only a real difference counts: a re-read after a reconnect that finds
                    // the same rows changes nothing downstream.
                    Some(rows) if rows != self.rows => {
                        self.rows = rows;
                        Step::Changed
                    }
                    _ if first => Step::Changed,
                    _ => Step::Same,
                }
            }
            Event::Change {
                kind,
                rowid,
                values,
                change_id,
            } => {
                let expected = self.last_change.map_or(1, |c| c + 1);
                if change_id < expected {
                    // Already applied (a resume may repeat the last one).
                    return Step::Same;
                }
                if change_id != expected {
                    return Step::Gap {
                        expected,
                        got: change_id,
                    };
                }
                self.last_change = Some(change_id);
                let before = match kind {
                    ChangeKind::Delete => self.rows.remove(&rowid),
                    ChangeKind::Insert | ChangeKind::Update => {
                        self.rows.insert(rowid, values.clone())
                    }
                };
                let same = match kind {
                    ChangeKind::Delete => before.is_none(),
                    _ => before.as_ref() == Some(&values),
                };
                if same {
                    Step::Same
                } else {
                    Step::Changed
                }
            }
            Event::Error(e) => Step::Failed(e),
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = &Vec<Value>> {
        self.rows.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(kind: ChangeKind, rowid: u64, v: &str, change_id: u64) -> Event {
        Event::Change {
            kind,
            rowid,
            values: vec![json!(v)],
            change_id,
        }
    }

    #[test]
    fn rows_then_changes_then_a_gap() {
        let mut m = Mirror::default();
        m.restart();
        assert_eq!(m.apply(Event::Row(1, vec![json!("a")])), Step::Same);
        assert!(!m.synced, "not usable before the end of the initial result");
        assert_eq!(m.apply(Event::Eoq(Some(0))), Step::Changed);
        assert_eq!(
            m.apply(change(ChangeKind::Insert, 2, "b", 1)),
            Step::Changed
        );
        assert_eq!(
            m.apply(change(ChangeKind::Update, 2, "b", 2)),
            Step::Same,
            "same values"
        );
        assert_eq!(
            m.apply(change(ChangeKind::Update, 2, "b", 2)),
            Step::Same,
            "a repeat"
        );
        assert_eq!(
            m.apply(change(ChangeKind::Delete, 1, "a", 3)),
            Step::Changed
        );
        assert_eq!(m.rows().count(), 1);
        assert_eq!(
            m.apply(change(ChangeKind::Insert, 9, "z", 5)),
            Step::Gap {
                expected: 4,
                got: 5
            }
        );
        assert_eq!(m.last_change, Some(3));
    }

    #[test]
    fn a_re_read_with_the_same_rows_is_no_change() {
        let mut m = Mirror::default();
        m.restart();
        m.apply(Event::Row(1, vec![json!("a")]));
        m.apply(Event::Eoq(Some(7)));
        m.restart();
        m.apply(Event::Row(1, vec![json!("a")]));
        assert_eq!(m.apply(Event::Eoq(Some(9))), Step::Same);
        assert_eq!(m.last_change, Some(9));
        m.restart();
        assert_eq!(
            m.apply(Event::Eoq(Some(10))),
            Step::Changed,
            "all rows gone"
        );
    }
}
