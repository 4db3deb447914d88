//! Transaction assembly: pgoutput messages in, row changes with their table
//! layout and transaction out.
//!
//! # Why it streams
//!
//! With protocol version 1 and `streaming` off, PostgreSQL sends a transaction
//! only after it committed, as `Begin`, its changes, then `Commit` (the
//! documentation: "The logical replication protocol sends individual
//! transactions one by one. This means that all messages between a pair of
//! Begin and Commit messages belong to the same transaction."). So there is
//! nothing to roll back and no reason to hold a transaction in memory: the
//! [`Assembler`] hands out each change as it arrives, tagged with the
//! transaction's `final_lsn` and xid, and keeps only the transaction header and
//! the relation cache. A 1,000,000-row transaction costs the same memory as a
//! one-row one. The consumer decides where to cut UPDATEs and confirms the
//! `end_lsn` from [`Event::Commit`] once everything before it was applied.
//!
//! # The relation cache
//!
//! Changes name their table by OID only. The layout comes from Relation
//! messages: "Every DML message contains a relation OID, identifying the
//! publisher's relation that was acted on. Before the first DML message for a
//! given relation OID, a Relation message will be sent, describing the schema
//! of that relation. Subsequently, a new Relation message will be sent if the
//! relation's definition has changed since the last Relation message was sent
//! for it. (The protocol assumes that the client is capable of remembering
//! this metadata for as many relations as needed.)" Each Relation message
//! therefore *replaces* the cached entry (after `ALTER TABLE … ADD COLUMN` one
//! arrives mid-stream, and PostgreSQL 15 also re-sends it after a TRUNCATE).
//! Rows hold an [`Arc`] of the layout they were decoded with, so a later
//! replacement never changes the meaning of an earlier row.
//!
//! # States
//!
//! ```text
//!              Relation, Type, non-transactional Message
//!                    ┌──────┐
//!                    ▼      │
//!              ┌────────────┴┐   Begin    ┌──────────────────┐
//!   new() ────▶│   between   ├───────────▶│  in transaction  │◀─┐ Insert, Update, Delete,
//!              │transactions │◀───────────┤ (final_lsn, xid) ├──┘ Truncate, Message,
//!              └─────────────┘   Commit   └──────────────────┘    Relation, Type, Origin
//! ```
//!
//! Anything else is a [`TxnError`] and leaves the state as it was. An error
//! means the stream cannot be trusted: the consumer should stop and reconnect
//! with a fresh `Assembler` (PostgreSQL re-sends Relation messages at the
//! start of every session).

use std::collections::HashMap;
use std::sync::Arc;

use crate::lsn::Lsn;
use crate::pgoutput::{LogicalMessage, Message, OldRow, Origin, Relation, TypeInfo, Value};

/// Turns a pgoutput message stream into [`Event`]s, one message at a time.
#[derive(Debug, Default)]
pub struct Assembler {
    relations: HashMap<u32, Arc<Relation>>,
    types: HashMap<u32, TypeInfo>,
    current: Option<Open>,
}

/// The transaction between Begin and Commit.
#[derive(Debug)]
struct Open {
    final_lsn: Lsn,
    xid: u32,
    origin: Option<Origin>,
}

impl Assembler {
    /// An assembler with an empty relation cache, between transactions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next message. Returns the event it completes, or `Ok(None)`
    /// for messages that only update state (Relation, Type, Origin).
    pub fn push(&mut self, msg: Message) -> Result<Option<Event>, TxnError> {
        let event = match msg {
            Message::Begin(begin) => {
                if let Some(open) = &self.current {
                    return Err(TxnError::NestedBegin {
                        open_xid: open.xid,
                        xid: begin.xid,
                    });
                }
                self.current = Some(Open {
                    final_lsn: begin.final_lsn,
                    xid: begin.xid,
                    origin: None,
                });
                Event::Begin {
                    final_lsn: begin.final_lsn,
                    xid: begin.xid,
                    commit_time_micros: begin.commit_time_micros,
                }
            }
            Message::Commit(commit) => {
                let open = self.current.as_ref().ok_or(TxnError::CommitWithoutBegin {
                    commit_lsn: commit.commit_lsn,
                })?;
                if open.final_lsn != commit.commit_lsn {
                    return Err(TxnError::CommitLsnMismatch {
                        xid: open.xid,
                        final_lsn: open.final_lsn,
                        commit_lsn: commit.commit_lsn,
                    });
                }
                let xid = open.xid;
                self.current = None;
                Event::Commit {
                    final_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    xid,
                }
            }
            Message::Origin(origin) => {
                let open = self
                    .current
                    .as_mut()
                    .ok_or(TxnError::ChangeOutsideTransaction { what: "origin" })?;
                open.origin = Some(origin);
                return Ok(None);
            }
            Message::Relation(relation) => {
                self.relations.insert(relation.oid, Arc::new(relation));
                return Ok(None);
            }
            Message::Type(info) => {
                self.types.insert(info.oid, info);
                return Ok(None);
            }
            Message::Insert(insert) => {
                let (final_lsn, xid) = self.open("insert")?;
                let relation = self.relation(insert.relation_oid)?;
                let new = Row::new(&relation, insert.new)?;
                Event::Change(RowChange {
                    final_lsn,
                    xid,
                    relation,
                    kind: ChangeKind::Insert,
                    old: None,
                    new: Some(new),
                })
            }
            Message::Update(update) => {
                let (final_lsn, xid) = self.open("update")?;
                let relation = self.relation(update.relation_oid)?;
                let old = match update.old {
                    Some(old) => Some(Row::new(&relation, old.into_values())?),
                    None => None,
                };
                let new = Row::new(&relation, update.new)?;
                Event::Change(RowChange {
                    final_lsn,
                    xid,
                    relation,
                    kind: ChangeKind::Update,
                    old,
                    new: Some(new),
                })
            }
            Message::Delete(delete) => {
                let (final_lsn, xid) = self.open("delete")?;
                let relation = self.relation(delete.relation_oid)?;
                let old = Row::new(&relation, OldRow::into_values(delete.old))?;
                Event::Change(RowChange {
                    final_lsn,
                    xid,
                    relation,
                    kind: ChangeKind::Delete,
                    old: Some(old),
                    new: None,
                })
            }
            Message::Truncate(truncate) => {
                let (final_lsn, _) = self.open("truncate")?;
                let relations = truncate
                    .relation_oids
                    .iter()
                    .map(|&oid| self.relation(oid))
                    .collect::<Result<Vec<_>, _>>()?;
                Event::Truncate {
                    final_lsn,
                    relations,
                    cascade: truncate.cascade,
                }
            }
            Message::Message(message) => {
                let final_lsn = match (&self.current, message.transactional) {
                    (Some(open), _) => Some(open.final_lsn),
                    (None, false) => None,
                    (None, true) => {
                        return Err(TxnError::ChangeOutsideTransaction {
                            what: "transactional message",
                        })
                    }
                };
                Event::Message { final_lsn, message }
            }
        };
        Ok(Some(event))
    }

    /// Between Begin and Commit.
    pub fn in_transaction(&self) -> bool {
        self.current.is_some()
    }

    /// The `final_lsn` of the transaction being received, if any.
    pub fn current(&self) -> Option<Lsn> {
        self.current.as_ref().map(|open| open.final_lsn)
    }

    /// The last Origin message of the open transaction, if it had one.
    pub fn origin(&self) -> Option<&Origin> {
        self.current.as_ref().and_then(|open| open.origin.as_ref())
    }

    /// The cached layout of the table with this OID.
    pub fn relation_by_oid(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    /// The name of a user-defined type announced by a Type message.
    pub fn type_info(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    fn open(&self, what: &'static str) -> Result<(Lsn, u32), TxnError> {
        self.current
            .as_ref()
            .map(|open| (open.final_lsn, open.xid))
            .ok_or(TxnError::ChangeOutsideTransaction { what })
    }

    fn relation(&self, oid: u32) -> Result<Arc<Relation>, TxnError> {
        self.relations
            .get(&oid)
            .cloned()
            .ok_or(TxnError::UnknownRelation { oid })
    }
}

/// What one message contributed to the stream of committed transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A committed transaction starts.
    Begin {
        /// The LSN of its commit record; it identifies the transaction in order.
        final_lsn: Lsn,
        /// Its transaction id.
        xid: u32,
        /// Commit time in microseconds since 2000-01-01 00:00 UTC.
        commit_time_micros: i64,
    },
    /// A row was inserted, updated or deleted.
    Change(RowChange),
    /// Tables were truncated: every row is gone, and no row is sent.
    Truncate {
        /// The transaction's commit LSN.
        final_lsn: Lsn,
        /// The truncated tables.
        relations: Vec<Arc<Relation>>,
        /// `TRUNCATE … CASCADE`: PostgreSQL already lists the cascaded tables.
        cascade: bool,
    },
    /// A `pg_logical_emit_message` message.
    Message {
        /// The enclosing transaction's commit LSN when the message arrives
        /// inside one (always, for a transactional message); `None` between
        /// transactions, which is where PostgreSQL sends non-transactional
        /// messages, even one emitted inside a transaction.
        final_lsn: Option<Lsn>,
        /// The message.
        message: LogicalMessage,
    },
    /// The transaction is complete.
    Commit {
        /// The transaction's `final_lsn`, as in [`Event::Begin`].
        final_lsn: Lsn,
        /// The end of the commit record: confirm this LSN once the transaction
        /// and all earlier ones were applied.
        end_lsn: Lsn,
        /// Its transaction id.
        xid: u32,
    },
}

/// One changed row of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// The transaction's commit LSN.
    pub final_lsn: Lsn,
    /// The transaction id.
    pub xid: u32,
    /// The table layout the values were decoded with.
    pub relation: Arc<Relation>,
    /// Insert, update or delete.
    pub kind: ChangeKind,
    /// Delete: the key (other columns NULL) or, under `REPLICA IDENTITY FULL`,
    /// the whole old row. Update: the old key if it changed, the old row under
    /// FULL, otherwise `None`. Insert: `None`.
    pub old: Option<Row>,
    /// Insert and update: the new row. Delete: `None`.
    pub new: Option<Row>,
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
}

/// A tuple's values together with the layout that names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    relation: Arc<Relation>,
    values: Vec<Value>,
}

impl Row {
    fn new(relation: &Arc<Relation>, values: Vec<Value>) -> Result<Row, TxnError> {
        if values.len() != relation.columns.len() {
            return Err(TxnError::ColumnCountMismatch {
                relation: relation.qualified_name(),
                expected: relation.columns.len(),
                got: values.len(),
            });
        }
        Ok(Row {
            relation: Arc::clone(relation),
            values,
        })
    }

    /// The value of `column`, or `None` if the table has no such column.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.values.get(self.relation.column_index(column)?)
    }

    /// The value of `column` as text: `Ok(None)` for NULL. An unchanged TOASTed
    /// value, a binary or non-UTF-8 value and a missing column are errors.
    pub fn text(&self, column: &str) -> Result<Option<&str>, TxnError> {
        let value = self.get(column).ok_or_else(|| TxnError::NoSuchColumn {
            relation: self.relation.qualified_name(),
            column: column.to_owned(),
        })?;
        match value {
            Value::Null => Ok(None),
            Value::Text(bytes) => {
                std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| TxnError::NotUtf8 {
                        column: column.to_owned(),
                    })
            }
            Value::UnchangedToast => Err(TxnError::UnchangedToast {
                column: column.to_owned(),
            }),
            Value::Binary(_) => Err(TxnError::NotText {
                column: column.to_owned(),
            }),
        }
    }

    /// Whether `column` is an unchanged TOASTed value (the `'u'` marker), whose
    /// actual value was not sent.
    pub fn is_unchanged_toast(&self, column: &str) -> bool {
        matches!(self.get(column), Some(Value::UnchangedToast))
    }

    /// The layout of the table this row belongs to.
    pub fn relation(&self) -> &Relation {
        &self.relation
    }

    /// The values in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }
}

/// A message that does not fit the transaction structure, or a value that is
/// not what the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// A change (or an Origin or transactional message) arrived between
    /// transactions.
    #[error("{what} outside a transaction")]
    ChangeOutsideTransaction {
        /// What arrived: "insert", "update", "delete", "truncate", "origin" or
        /// "transactional message".
        what: &'static str,
    },
    /// A change named a table no Relation message described.
    #[error("change for relation OID {oid} before any relation message for it")]
    UnknownRelation {
        /// The table OID.
        oid: u32,
    },
    /// Begin arrived while a transaction was open.
    #[error("begin of xid {xid} while xid {open_xid} is still open")]
    NestedBegin {
        /// The transaction still open.
        open_xid: u32,
        /// The transaction that began.
        xid: u32,
    },
    /// Commit arrived between transactions.
    #[error("commit at {commit_lsn} without begin")]
    CommitWithoutBegin {
        /// The commit LSN it carried.
        commit_lsn: Lsn,
    },
    /// Commit's LSN differs from its Begin's final LSN.
    #[error("commit at {commit_lsn} does not match begin of xid {xid} with final LSN {final_lsn}")]
    CommitLsnMismatch {
        /// The open transaction.
        xid: u32,
        /// Begin's final LSN.
        final_lsn: Lsn,
        /// Commit's LSN.
        commit_lsn: Lsn,
    },
    /// A tuple's column count differs from its Relation message.
    #[error("row of {relation} has {got} values but the relation has {expected} columns")]
    ColumnCountMismatch {
        /// The table, `schema.name`.
        relation: String,
        /// The relation's column count.
        expected: usize,
        /// The tuple's value count.
        got: usize,
    },
    /// The table has no column of that name.
    #[error("{relation} has no column {column:?}")]
    NoSuchColumn {
        /// The table, `schema.name`.
        relation: String,
        /// The column asked for.
        column: String,
    },
    /// The value was not sent because it is TOASTed and did not change.
    #[error("column {column:?} is an unchanged TOASTed value, which PostgreSQL does not send")]
    UnchangedToast {
        /// The column.
        column: String,
    },
    /// The value was sent in binary format.
    #[error("column {column:?} is in binary format, not text")]
    NotText {
        /// The column.
        column: String,
    },
    /// The text value is not UTF-8.
    #[error("column {column:?} is not UTF-8")]
    NotUtf8 {
        /// The column.
        column: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::fixtures;
    use crate::pgoutput::{Begin, Commit, Delete, Insert, Truncate, Update};
    use bytes::Bytes;
    use proptest::prelude::*;

    /// Feeds a whole fixture, failing on any error; returns the events.
    fn run(fixture: &str) -> (Assembler, Vec<Event>) {
        let mut asm = Assembler::new();
        let mut events = Vec::new();
        for (i, msg) in fixtures::parsed(fixture).into_iter().enumerate() {
            match asm.push(msg) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => {}
                Err(e) => panic!("message {i}: {e}"),
            }
        }
        assert!(!asm.in_transaction());
        (asm, events)
    }

    fn changes(events: &[Event]) -> Vec<&RowChange> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Change(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// One letter per event: B(egin) I/U/D(change) T(runcate) M(essage) C(ommit).
    fn shape(events: &[Event]) -> String {
        events
            .iter()
            .map(|e| match e {
                Event::Begin { .. } => 'B',
                Event::Change(c) => match c.kind {
                    ChangeKind::Insert => 'I',
                    ChangeKind::Update => 'U',
                    ChangeKind::Delete => 'D',
                },
                Event::Truncate { .. } => 'T',
                Event::Message { .. } => 'M',
                Event::Commit { .. } => 'C',
            })
            .collect()
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    fn relation(oid: u32, columns: &[&str]) -> Relation {
        Relation {
            oid,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: crate::pgoutput::ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|name| crate::pgoutput::ColumnInfo {
                    is_key: *name == "id",
                    name: (*name).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn begin(final_lsn: u64, xid: u32) -> Message {
        Message::Begin(Begin {
            final_lsn: Lsn::new(final_lsn),
            commit_time_micros: 0,
            xid,
        })
    }

    fn commit(commit_lsn: u64, end_lsn: u64) -> Message {
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn::new(commit_lsn),
            end_lsn: Lsn::new(end_lsn),
            commit_time_micros: 0,
        })
    }

    fn insert(oid: u32, values: Vec<Value>) -> Message {
        Message::Insert(Insert {
            relation_oid: oid,
            new: values,
        })
    }

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn every_fixture_assembles_into_committed_transactions() {
        let expected = [
            ("default_identity", "BIICBUCBUCBDC"),
            ("full_identity", "BICBUCBDC"),
            ("toast_unchanged", "BUC"),
            ("add_column", "BICBICBUC"),
            ("messages", "MMBIMCBMC"),
            ("truncate", "BTCBTC"),
            ("enum_type", "BIC"),
            ("origin", "BIC"),
            ("binary", "BIC"),
        ];
        for ((name, fixture), (expected_name, expected_shape)) in
            fixtures::ALL.into_iter().zip(expected)
        {
            assert_eq!(name, expected_name);
            let (_, events) = run(fixture);
            assert_eq!(shape(&events), expected_shape, "{name}");
        }
    }

    #[test]
    fn changes_carry_their_transaction_and_commit_gives_the_end_lsn() {
        let (_, events) = run(fixtures::DEFAULT_IDENTITY);
        let Event::Begin { final_lsn, xid, .. } = events[0] else {
            panic!("{:?}", events[0])
        };
        assert_eq!((final_lsn, xid), (lsn("0/159A240"), 747));
        for c in changes(&events[..4]) {
            assert_eq!((c.final_lsn, c.xid), (final_lsn, xid));
        }
        assert_eq!(
            events[3],
            Event::Commit {
                final_lsn,
                end_lsn: lsn("0/159A270"),
                xid
            }
        );
    }

    #[test]
    fn insert_row_reads_text_and_null_by_column_name() {
        let (_, events) = run(fixtures::DEFAULT_IDENTITY);
        let second = changes(&events)[1];
        assert_eq!(second.kind, ChangeKind::Insert);
        assert!(second.old.is_none());
        let row = second.new.as_ref().unwrap();
        assert_eq!(row.text("name"), Ok(Some("mail.example.org.")));
        assert_eq!(row.text("ttl"), Ok(None));
        assert_eq!(row.get("ttl"), Some(&Value::Null));
        assert_eq!(row.get("nope"), None);
        assert_eq!(row.relation().name, "rr");
        assert_eq!(row.values().len(), 5);
        assert_eq!(
            row.text("nope"),
            Err(TxnError::NoSuchColumn {
                relation: "public.rr".into(),
                column: "nope".into()
            })
        );
    }

    #[test]
    fn update_under_default_identity_has_no_old_row_unless_the_key_changed() {
        let (_, events) = run(fixtures::DEFAULT_IDENTITY);
        let c = changes(&events);
        assert_eq!(c[2].kind, ChangeKind::Update);
        assert!(c[2].old.is_none());
        assert_eq!(
            c[2].new.as_ref().unwrap().text("rdata"),
            Ok(Some("192.0.2.10"))
        );
        let old = c[3].old.as_ref().expect("old key when the key changed");
        assert_eq!(old.text("id"), Ok(Some("2")));
        assert_eq!(old.text("name"), Ok(None));
        assert_eq!(c[3].new.as_ref().unwrap().text("id"), Ok(Some("3")));
    }

    #[test]
    fn delete_under_default_identity_carries_only_the_key() {
        let (_, events) = run(fixtures::DEFAULT_IDENTITY);
        let delete = changes(&events)[4];
        assert_eq!(delete.kind, ChangeKind::Delete);
        assert!(delete.new.is_none());
        let old = delete.old.as_ref().unwrap();
        assert_eq!(old.text("id"), Ok(Some("1")));
        for column in ["name", "type", "ttl", "rdata"] {
            assert_eq!(old.text(column), Ok(None), "{column}");
        }
    }

    #[test]
    fn full_identity_update_and_delete_carry_the_whole_old_row() {
        let (_, events) = run(fixtures::FULL_IDENTITY);
        let c = changes(&events);
        let old = c[1].old.as_ref().unwrap();
        assert_eq!(old.text("ttl"), Ok(Some("300")));
        assert_eq!(old.text("rdata"), Ok(Some("192.0.2.1")));
        assert_eq!(c[1].new.as_ref().unwrap().text("ttl"), Ok(None));
        let deleted = c[2].old.as_ref().unwrap();
        assert_eq!(deleted.text("name"), Ok(Some("www.example.org.")));
        assert_eq!(deleted.text("rdata"), Ok(Some("192.0.2.10")));
    }

    #[test]
    fn unchanged_toast_value_is_flagged_and_never_read_as_null() {
        let (_, events) = run(fixtures::TOAST_UNCHANGED);
        let row = changes(&events)[0].new.as_ref().unwrap();
        assert!(row.is_unchanged_toast("big"));
        assert!(!row.is_unchanged_toast("ttl"));
        assert!(!row.is_unchanged_toast("nope"));
        assert_eq!(
            row.text("big"),
            Err(TxnError::UnchangedToast {
                column: "big".into()
            })
        );
        assert_eq!(row.text("ttl"), Ok(Some("600")));
    }

    #[test]
    fn relation_message_mid_stream_replaces_the_layout_for_later_rows_only() {
        let (asm, events) = run(fixtures::ADD_COLUMN);
        let c = changes(&events);
        let before = c[0].new.as_ref().unwrap();
        let after = c[1].new.as_ref().unwrap();
        assert_eq!(before.relation().columns.len(), 2);
        assert_eq!(before.get("addr"), None);
        assert_eq!(after.text("addr"), Ok(Some("2001:db8::2")));
        // The update after the DDL reuses the new layout without a new Relation.
        assert_eq!(
            c[2].new.as_ref().unwrap().text("addr"),
            Ok(Some("192.0.2.1"))
        );
        let cached = asm.relation_by_oid(c[0].relation.oid).unwrap();
        assert_eq!(cached.columns.len(), 3);
        assert!(Arc::ptr_eq(cached, &c[2].relation));
    }

    #[test]
    fn truncate_names_every_truncated_table() {
        let (_, events) = run(fixtures::TRUNCATE);
        let truncates: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Truncate {
                    relations, cascade, ..
                } => Some((
                    relations
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>(),
                    *cascade,
                )),
                _ => None,
            })
            .collect();
        assert_eq!(truncates.len(), 2);
        assert_eq!(truncates[0], (vec!["zone_b"], false));
        let (mut names, cascade) = truncates[1].clone();
        names.sort();
        assert_eq!((names, cascade), (vec!["zone_a", "zone_b"], true));
    }

    #[test]
    fn transactional_messages_get_the_final_lsn_and_others_do_not() {
        let (_, events) = run(fixtures::MESSAGES);
        let messages: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Message { final_lsn, message } => {
                    Some((*final_lsn, message.transactional, &message.content[..]))
                }
                _ => None,
            })
            .collect();
        let Event::Begin {
            final_lsn: first, ..
        } = events[2]
        else {
            panic!()
        };
        let Event::Begin {
            final_lsn: second, ..
        } = events[6]
        else {
            panic!()
        };
        assert_eq!(
            messages,
            [
                (None, false, &b"outside"[..]),
                (None, false, b"inside"),
                (Some(first), true, b"fence 1"),
                (Some(second), true, &[0x00, 0xff]),
            ]
        );
    }

    #[test]
    fn type_and_origin_messages_update_state_without_events() {
        let mut asm = Assembler::new();
        let mut msgs = fixtures::parsed(fixtures::ENUM_TYPE).into_iter();
        asm.push(msgs.next().unwrap()).unwrap();
        let Some(Message::Type(ty)) = msgs.next() else {
            panic!()
        };
        assert_eq!(asm.push(Message::Type(ty.clone())), Ok(None));
        assert_eq!(asm.type_info(ty.oid), Some(&ty));

        let mut asm = Assembler::new();
        let mut msgs = fixtures::parsed(fixtures::ORIGIN).into_iter();
        asm.push(msgs.next().unwrap()).unwrap();
        assert_eq!(asm.push(msgs.next().unwrap()), Ok(None));
        assert_eq!(asm.origin().map(|o| o.name.as_str()), Some("upstream"));
        for msg in msgs {
            asm.push(msg).unwrap();
        }
        assert_eq!(asm.origin(), None);
    }

    #[test]
    fn binary_values_are_refused_as_text() {
        let (_, events) = run(fixtures::BINARY);
        let row = changes(&events)[0].new.as_ref().unwrap();
        assert_eq!(
            row.text("name"),
            Err(TxnError::NotText {
                column: "name".into()
            })
        );
        assert_eq!(row.text("ttl"), Ok(None));
    }

    #[test]
    fn non_utf8_text_is_an_error_naming_the_column() {
        let mut asm = Assembler::new();
        asm.push(Message::Relation(relation(1, &["id"]))).unwrap();
        asm.push(begin(10, 1)).unwrap();
        let Some(Event::Change(c)) = asm
            .push(insert(1, vec![Value::Text(Bytes::from_static(&[0xff]))]))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            c.new.unwrap().text("id"),
            Err(TxnError::NotUtf8 {
                column: "id".into()
            })
        );
    }

    #[test]
    fn out_of_place_messages_are_errors_that_leave_the_state_alone() {
        let mut asm = Assembler::new();
        asm.push(Message::Relation(relation(1, &["id", "name"])))
            .unwrap();
        let row = vec![text("1"), Value::Null];
        assert_eq!(
            asm.push(insert(1, row.clone())),
            Err(TxnError::ChangeOutsideTransaction { what: "insert" })
        );
        assert_eq!(
            asm.push(commit(10, 11)),
            Err(TxnError::CommitWithoutBegin {
                commit_lsn: Lsn::new(10)
            })
        );
        let transactional = LogicalMessage {
            transactional: true,
            lsn: Lsn::new(5),
            prefix: "p".into(),
            content: Bytes::new(),
        };
        assert_eq!(
            asm.push(Message::Message(transactional)),
            Err(TxnError::ChangeOutsideTransaction {
                what: "transactional message"
            })
        );
        assert!(!asm.in_transaction());

        asm.push(begin(10, 7)).unwrap();
        assert!(asm.in_transaction());
        assert_eq!(
            asm.push(begin(20, 8)),
            Err(TxnError::NestedBegin {
                open_xid: 7,
                xid: 8
            })
        );
        assert_eq!(
            asm.push(insert(2, row.clone())),
            Err(TxnError::UnknownRelation { oid: 2 })
        );
        assert_eq!(
            asm.push(insert(1, vec![text("1")])),
            Err(TxnError::ColumnCountMismatch {
                relation: "public.t".into(),
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            asm.push(Message::Truncate(Truncate {
                cascade: false,
                restart_identity: false,
                relation_oids: vec![1, 3],
            })),
            Err(TxnError::UnknownRelation { oid: 3 })
        );
        assert_eq!(
            asm.push(Message::Delete(Delete {
                relation_oid: 1,
                old: OldRow::Key(vec![text("1")]),
            })),
            Err(TxnError::ColumnCountMismatch {
                relation: "public.t".into(),
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            asm.push(commit(11, 12)),
            Err(TxnError::CommitLsnMismatch {
                xid: 7,
                final_lsn: Lsn::new(10),
                commit_lsn: Lsn::new(11)
            })
        );
        assert!(asm.in_transaction());
        assert!(matches!(
            asm.push(insert(1, row)),
            Ok(Some(Event::Change(_)))
        ));
        assert!(matches!(
            asm.push(commit(10, 12)),
            Ok(Some(Event::Commit { xid: 7, .. }))
        ));
        assert!(!asm.in_transaction());
    }

    #[test]
    fn errors_display_lowercase_with_their_data() {
        assert_eq!(
            TxnError::CommitLsnMismatch {
                xid: 7,
                final_lsn: lsn("16/B374D848"),
                commit_lsn: lsn("16/B374D850")
            }
            .to_string(),
            "commit at 16/B374D850 does not match begin of xid 7 with final LSN 16/B374D848"
        );
    }

    #[test]
    fn a_million_row_transaction_streams_without_retaining_rows() {
        let mut asm = Assembler::new();
        asm.push(Message::Relation(relation(1, &["id"]))).unwrap();
        asm.push(begin(100, 9)).unwrap();
        let value = Value::Text(Bytes::from_static(b"1"));
        for _ in 0..1_000_000 {
            let event = asm.push(insert(1, vec![value.clone()])).unwrap();
            assert!(matches!(event, Some(Event::Change(_))));
        }
        // Nothing but the cache holds the layout: no row was kept.
        assert_eq!(Arc::strong_count(asm.relation_by_oid(1).unwrap()), 1);
        assert!(matches!(
            asm.push(commit(100, 101)),
            Ok(Some(Event::Commit { .. }))
        ));
    }

    #[test]
    fn update_old_row_keeps_its_kind_independent_values() {
        let mut asm = Assembler::new();
        asm.push(Message::Relation(relation(1, &["id", "v"])))
            .unwrap();
        asm.push(begin(1, 1)).unwrap();
        let Ok(Some(Event::Change(c))) = asm.push(Message::Update(Update {
            relation_oid: 1,
            old: Some(OldRow::Full(vec![text("1"), text("a")])),
            new: vec![text("1"), Value::UnchangedToast],
        })) else {
            panic!()
        };
        assert_eq!(c.old.unwrap().text("v"), Ok(Some("a")));
        assert!(c.new.unwrap().is_unchanged_toast("v"));
    }

    fn any_message() -> impl Strategy<Value = Message> {
        let captured: Vec<Message> = fixtures::ALL
            .iter()
            .flat_map(|(_, f)| fixtures::parsed(f))
            .collect();
        prop_oneof![
            3 => prop::sample::select(captured),
            1 => crate::pgoutput::tests::message(),
        ]
    }

    proptest! {
        #[test]
        fn any_message_sequence_never_panics_and_errors_keep_the_state(
            msgs in prop::collection::vec(any_message(), 0..60),
        ) {
            let mut asm = Assembler::new();
            for msg in msgs {
                let was_open = asm.in_transaction();
                let is_begin = matches!(msg, Message::Begin(_));
                let is_commit = matches!(msg, Message::Commit(_));
                match asm.push(msg) {
                    Err(_) => prop_assert_eq!(asm.in_transaction(), was_open),
                    Ok(_) if is_begin => prop_assert!(asm.in_transaction()),
                    Ok(_) if is_commit => prop_assert!(!asm.in_transaction()),
                    Ok(_) => prop_assert_eq!(asm.in_transaction(), was_open),
                }
            }
        }
    }
}
