//! The `protobuf` format of pg2dns_plugin's decoding output plugin
//! (proto/pg2dns.proto), shared by the plugin that writes it and the stream
//! that reads it.
//!
//! # Why this module exists
//!
//! With `[database] plugin = "pg2dns"` the slot's output plugin is
//! pg2dns_plugin in `format 'protobuf'` rather than pgoutput (docs/plugin.md).
//! Each `XLogData` payload is then one [`Event`], and [`decode`] turns it
//! into the very [`pgoutput::Message`] pgoutput would have sent for the same
//! change, so that everything after the parser (transaction assembly, the
//! relation checks, the mapping, the planner) is one code path for both
//! formats. Typed values are written back in PostgreSQL's own text output
//! for their type (`int8out`'s decimal digits, `boolout`'s `t`/`f`), so a row
//! maps to the same records whichever format carried it.
//!
//! [`Event::from`] goes the other way (a pgoutput message as the plugin would
//! write it), for tests and benchmarks.
//!
//! # Framing
//!
//! One `Event` per payload, no length prefix: the replication protocol's
//! CopyData frame is the delimiter, as it is for pgoutput. The first byte is
//! the tag of the `event` field that is set, never pgoutput's `B`, `C` or `M`
//! (field 8 is reserved for this), so a client that peeks at pgoutput
//! boundaries (pgwire-replication does) never mistakes an `Event` for one.

use bytes::Bytes;
use prost::Message as _;

use crate::lsn::Lsn;
use crate::pgoutput::{self, ColumnInfo, Message, OldRow, ReplicaIdentity as Identity};

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/pg2dns.v1.rs"));
}

pub use generated::*;

/// Why a payload is not a valid `Event`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a protobuf `Event`.
    #[error("not a pg2dns protobuf event")]
    Protobuf(#[from] prost::DecodeError),
    /// The `Event` has no `event` field (or one this version does not know).
    #[error("protobuf event carries no known event")]
    NoEvent,
    /// A change lacks its new row.
    #[error("protobuf {kind} of relation {relation_oid} has no new tuple")]
    NoNewTuple {
        /// `insert` or `update`.
        kind: &'static str,
        /// The table's OID.
        relation_oid: u32,
    },
    /// A delete names neither its old key nor its old row.
    #[error("protobuf delete of relation {relation_oid} has no old key or old row")]
    NoOldTuple {
        /// The table's OID.
        relation_oid: u32,
    },
    /// A column value has none of its kinds set.
    #[error("protobuf {kind} of relation {relation_oid} has an empty value at column {column}")]
    EmptyValue {
        /// `insert`, `update` or `delete`.
        kind: &'static str,
        /// The table's OID.
        relation_oid: u32,
        /// The value's position in its tuple.
        column: usize,
    },
    /// A relation's replica identity is not one of the enum's values.
    #[error("protobuf relation {relation_oid} has unknown replica identity {value}")]
    BadReplicaIdentity {
        /// The table's OID.
        relation_oid: u32,
        /// The number read.
        value: i32,
    },
}

/// Decodes one payload of the `protobuf` format into the message pgoutput
/// would have sent. Byte contents are zero-copy slices of `buf`.
pub fn decode(buf: &Bytes) -> Result<Message, WireError> {
    let event = Event::decode(buf.clone())?;
    to_message(event)
}

/// The pgoutput message an `Event` stands for.
pub fn to_message(event: Event) -> Result<Message, WireError> {
    use event::Event as E;
    Ok(match event.event.ok_or(WireError::NoEvent)? {
        E::Begin(b) => Message::Begin(pgoutput::Begin {
            final_lsn: Lsn::new(b.final_lsn),
            commit_time_micros: b.commit_time_micros,
            xid: b.xid,
        }),
        E::Commit(c) => Message::Commit(pgoutput::Commit {
            flags: 0,
            commit_lsn: Lsn::new(c.commit_lsn),
            end_lsn: Lsn::new(c.end_lsn),
            commit_time_micros: c.commit_time_micros,
        }),
        E::Origin(o) => Message::Origin(pgoutput::Origin {
            commit_lsn: Lsn::new(o.commit_lsn),
            name: o.name,
        }),
        E::Relation(r) => {
            let replica_identity = match ReplicaIdentity::try_from(r.replica_identity) {
                Ok(ReplicaIdentity::Default) => Identity::Default,
                Ok(ReplicaIdentity::Nothing) => Identity::Nothing,
                Ok(ReplicaIdentity::Full) => Identity::Full,
                Ok(ReplicaIdentity::Index) => Identity::Index,
                Err(_) => {
                    return Err(WireError::BadReplicaIdentity {
                        relation_oid: r.oid,
                        value: r.replica_identity,
                    })
                }
            };
            Message::Relation(pgoutput::Relation {
                oid: r.oid,
                namespace: r.namespace,
                name: r.name,
                replica_identity,
                columns: r
                    .columns
                    .into_iter()
                    .map(|c| ColumnInfo {
                        is_key: c.is_key,
                        name: c.name,
                        type_oid: c.type_oid,
                        type_modifier: c.type_modifier,
                    })
                    .collect(),
            })
        }
        E::Type(t) => Message::Type(pgoutput::TypeInfo {
            oid: t.oid,
            namespace: t.namespace,
            name: t.name,
        }),
        E::Insert(i) => {
            let new = i.new.ok_or(WireError::NoNewTuple {
                kind: "insert",
                relation_oid: i.relation_oid,
            })?;
            Message::Insert(pgoutput::Insert {
                relation_oid: i.relation_oid,
                new: values(new, "insert", i.relation_oid)?,
            })
        }
        E::Update(u) => {
            let new = u.new.ok_or(WireError::NoNewTuple {
                kind: "update",
                relation_oid: u.relation_oid,
            })?;
            let old = match u.old {
                None => None,
                Some(update::Old::OldKey(t)) => {
                    Some(OldRow::Key(values(t, "update", u.relation_oid)?))
                }
                Some(update::Old::OldRow(t)) => {
                    Some(OldRow::Full(values(t, "update", u.relation_oid)?))
                }
            };
            Message::Update(pgoutput::Update {
                relation_oid: u.relation_oid,
                old,
                new: values(new, "update", u.relation_oid)?,
            })
        }
        E::Delete(d) => {
            let old = match d.old {
                None => {
                    return Err(WireError::NoOldTuple {
                        relation_oid: d.relation_oid,
                    })
                }
                Some(delete::Old::OldKey(t)) => OldRow::Key(values(t, "delete", d.relation_oid)?),
                Some(delete::Old::OldRow(t)) => OldRow::Full(values(t, "delete", d.relation_oid)?),
            };
            Message::Delete(pgoutput::Delete {
                relation_oid: d.relation_oid,
                old,
            })
        }
        E::Truncate(t) => Message::Truncate(pgoutput::Truncate {
            cascade: t.cascade,
            restart_identity: t.restart_identity,
            relation_oids: t.relation_oids,
        }),
        E::Message(m) => Message::Message(pgoutput::LogicalMessage {
            transactional: m.transactional,
            lsn: Lsn::new(m.lsn),
            prefix: m.prefix,
            content: m.content,
        }),
    })
}

/// A tuple's values as pgoutput's text-format values.
fn values(
    tuple: Tuple,
    kind: &'static str,
    relation_oid: u32,
) -> Result<Vec<pgoutput::Value>, WireError> {
    tuple
        .values
        .into_iter()
        .enumerate()
        .map(|(column, v)| {
            use value::Kind;
            Ok(match v.kind {
                None => {
                    return Err(WireError::EmptyValue {
                        kind,
                        relation_oid,
                        column,
                    })
                }
                Some(Kind::Null(_)) => pgoutput::Value::Null,
                Some(Kind::UnchangedToast(_)) => pgoutput::Value::UnchangedToast,
                Some(Kind::Text(s)) => pgoutput::Value::Text(Bytes::from(s)),
                // int2out/int4out/int8out: optional minus sign, decimal digits.
                Some(Kind::Int(i)) => pgoutput::Value::Text(Bytes::from(i.to_string())),
                // boolout.
                Some(Kind::Boolean(b)) => {
                    pgoutput::Value::Text(Bytes::from_static(if b { b"t" } else { b"f" }))
                }
            })
        })
        .collect()
}

impl Value {
    /// SQL NULL.
    pub fn null() -> Value {
        Value {
            kind: Some(value::Kind::Null(true)),
        }
    }

    /// A value in its type's text output format.
    pub fn text(s: impl Into<String>) -> Value {
        Value {
            kind: Some(value::Kind::Text(s.into())),
        }
    }

    /// An int2, int4 or int8.
    pub fn int(i: i64) -> Value {
        Value {
            kind: Some(value::Kind::Int(i)),
        }
    }

    /// A bool.
    pub fn boolean(b: bool) -> Value {
        Value {
            kind: Some(value::Kind::Boolean(b)),
        }
    }

    /// A TOASTed value the UPDATE left unchanged.
    pub fn unchanged_toast() -> Value {
        Value {
            kind: Some(value::Kind::UnchangedToast(true)),
        }
    }
}

/// PostgreSQL's OIDs of the types the format carries as numbers or booleans.
pub mod oid {
    /// `bool`.
    pub const BOOL: u32 = 16;
    /// `int8`.
    pub const INT8: u32 = 20;
    /// `int2`.
    pub const INT2: u32 = 21;
    /// `int4`.
    pub const INT4: u32 = 23;
}

/// The typed value the plugin writes for a column of type `type_oid` whose
/// text output is `text` (what pgoutput would send): a number for the
/// integer types, a boolean for `bool`, the text itself otherwise.
pub fn typed(type_oid: u32, text: &str) -> Value {
    match type_oid {
        oid::INT2 | oid::INT4 | oid::INT8 => match text.parse() {
            Ok(i) => Value::int(i),
            Err(_) => Value::text(text),
        },
        oid::BOOL if text == "t" => Value::boolean(true),
        oid::BOOL if text == "f" => Value::boolean(false),
        _ => Value::text(text),
    }
}

impl Event {
    /// The payload the plugin writes for this event.
    pub fn to_payload(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

impl From<&Message> for Event {
    /// The event the plugin writes where pgoutput writes `m`, every value
    /// as text (see [`from_message`] for typed values).
    fn from(m: &Message) -> Event {
        from_message(m, &|_, _| None)
    }
}

/// Like `Event::from(m)`, typing tuple values with `type_of(relation_oid,
/// column)` (the column's type OID), as the plugin does.
pub fn from_message(m: &Message, type_of: &dyn Fn(u32, usize) -> Option<u32>) -> Event {
    use event::Event as E;
    let tuple = |relation_oid: u32, vals: &[pgoutput::Value]| Tuple {
        values: vals
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                pgoutput::Value::Null => Value::null(),
                pgoutput::Value::UnchangedToast => Value::unchanged_toast(),
                pgoutput::Value::Text(b) | pgoutput::Value::Binary(b) => {
                    let text = String::from_utf8_lossy(b);
                    match type_of(relation_oid, i) {
                        Some(t) => typed(t, &text),
                        None => Value::text(text),
                    }
                }
            })
            .collect(),
    };
    let event = match m {
        Message::Begin(b) => E::Begin(Begin {
            final_lsn: b.final_lsn.raw(),
            commit_time_micros: b.commit_time_micros,
            xid: b.xid,
        }),
        Message::Commit(c) => E::Commit(Commit {
            commit_lsn: c.commit_lsn.raw(),
            end_lsn: c.end_lsn.raw(),
            commit_time_micros: c.commit_time_micros,
        }),
        Message::Origin(o) => E::Origin(Origin {
            commit_lsn: o.commit_lsn.raw(),
            name: o.name.clone(),
        }),
        Message::Relation(r) => E::Relation(Relation {
            oid: r.oid,
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            replica_identity: match r.replica_identity {
                Identity::Default => ReplicaIdentity::Default,
                Identity::Nothing => ReplicaIdentity::Nothing,
                Identity::Full => ReplicaIdentity::Full,
                Identity::Index => ReplicaIdentity::Index,
            } as i32,
            columns: r
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                    is_key: c.is_key,
                })
                .collect(),
        }),
        Message::Type(t) => E::Type(TypeInfo {
            oid: t.oid,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
        }),
        Message::Insert(i) => E::Insert(Insert {
            relation_oid: i.relation_oid,
            new: Some(tuple(i.relation_oid, &i.new)),
        }),
        Message::Update(u) => E::Update(Update {
            relation_oid: u.relation_oid,
            old: u.old.as_ref().map(|o| match o {
                OldRow::Key(v) => update::Old::OldKey(tuple(u.relation_oid, v)),
                OldRow::Full(v) => update::Old::OldRow(tuple(u.relation_oid, v)),
            }),
            new: Some(tuple(u.relation_oid, &u.new)),
        }),
        Message::Delete(d) => E::Delete(Delete {
            relation_oid: d.relation_oid,
            old: Some(match &d.old {
                OldRow::Key(v) => delete::Old::OldKey(tuple(d.relation_oid, v)),
                OldRow::Full(v) => delete::Old::OldRow(tuple(d.relation_oid, v)),
            }),
        }),
        Message::Truncate(t) => E::Truncate(Truncate {
            cascade: t.cascade,
            restart_identity: t.restart_identity,
            relation_oids: t.relation_oids.clone(),
        }),
        Message::Message(m) => E::Message(LogicalMessage {
            transactional: m.transactional,
            lsn: m.lsn.raw(),
            prefix: m.prefix.clone(),
            content: m.content.clone(),
        }),
    };
    Event { event: Some(event) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::fixtures;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// The events the plugin would write for a captured pgoutput session,
    /// typed by the column types of the session's Relation messages.
    fn as_plugin_writes(messages: &[Message]) -> Vec<Vec<u8>> {
        let mut types: HashMap<u32, Vec<u32>> = HashMap::new();
        messages
            .iter()
            .map(|m| {
                if let Message::Relation(r) = m {
                    types.insert(r.oid, r.columns.iter().map(|c| c.type_oid).collect());
                }
                let type_of = |rel: u32, col: usize| types.get(&rel)?.get(col).copied();
                from_message(m, &type_of).to_payload()
            })
            .collect()
    }

    #[test]
    fn every_captured_pgoutput_session_decodes_to_the_same_messages_from_protobuf() {
        for (name, fixture) in fixtures::ALL {
            if name == "binary" {
                // `binary 'true'` values: the plugin always sends text.
                continue;
            }
            let messages = fixtures::parsed(fixture);
            let payloads = as_plugin_writes(&messages);
            for (m, payload) in messages.iter().zip(&payloads) {
                let back = decode(&Bytes::copy_from_slice(payload))
                    .unwrap_or_else(|e| panic!("{name}: {m:?}: {e}"));
                assert_eq!(&back, m, "{name}");
            }
        }
    }

    #[test]
    fn integer_and_boolean_columns_travel_as_numbers_and_come_back_as_postgres_prints_them() {
        let relation = Message::Relation(pgoutput::Relation {
            oid: 16384,
            namespace: "public".into(),
            name: "Hosts".into(),
            replica_identity: Identity::Full,
            columns: [
                ("id", oid::INT8),
                ("ttl", oid::INT4),
                ("prio", oid::INT2),
                ("on", oid::BOOL),
                ("name", 25),
            ]
            .iter()
            .map(|&(name, type_oid)| ColumnInfo {
                is_key: true,
                name: name.into(),
                type_oid,
                type_modifier: -1,
            })
            .collect(),
        });
        let text = |s: &str| pgoutput::Value::Text(Bytes::copy_from_slice(s.as_bytes()));
        let insert = Message::Insert(pgoutput::Insert {
            relation_oid: 16384,
            new: vec![
                text("-9223372036854775808"),
                text("2147483647"),
                text("-32768"),
                text("f"),
                text("Ünïcode.\\046.example."),
            ],
        });
        let payloads = as_plugin_writes(&[relation, insert.clone()]);
        let event = Event::decode(payloads[1].as_slice()).unwrap();
        let Some(event::Event::Insert(i)) = &event.event else {
            panic!("{event:?}")
        };
        let kinds: Vec<_> = i
            .new
            .as_ref()
            .unwrap()
            .values
            .iter()
            .map(|v| v.kind.clone())
            .collect();
        assert_eq!(
            kinds,
            vec![
                Some(value::Kind::Int(i64::MIN)),
                Some(value::Kind::Int(2147483647)),
                Some(value::Kind::Int(-32768)),
                Some(value::Kind::Boolean(false)),
                Some(value::Kind::Text("Ünïcode.\\046.example.".into())),
            ]
        );
        assert_eq!(decode(&Bytes::from(payloads[1].clone())), Ok(insert));
    }

    #[test]
    fn an_integer_column_whose_text_is_not_a_number_stays_text() {
        assert_eq!(typed(oid::INT4, "12x"), Value::text("12x"));
        assert_eq!(typed(oid::BOOL, "true"), Value::text("true"));
        assert_eq!(typed(oid::INT8, "007"), Value::int(7));
    }

    #[test]
    fn no_event_starts_with_a_pgoutput_boundary_tag() {
        let mut all = Vec::new();
        for (_, fixture) in fixtures::ALL {
            all.extend(as_plugin_writes(&fixtures::parsed(fixture)));
        }
        // Empty sub-messages too: the tag comes first whatever follows.
        for e in [
            event::Event::Begin(Begin::default()),
            event::Event::Commit(Commit::default()),
            event::Event::Relation(Relation::default()),
            event::Event::Insert(Insert::default()),
            event::Event::Update(Update::default()),
            event::Event::Delete(Delete::default()),
            event::Event::Truncate(Truncate::default()),
            event::Event::Message(LogicalMessage::default()),
            event::Event::Origin(Origin::default()),
            event::Event::Type(TypeInfo::default()),
        ] {
            all.push(Event { event: Some(e) }.to_payload());
        }
        for payload in all {
            assert!(
                !matches!(payload.first(), Some(b'B' | b'C' | b'M') | None),
                "{payload:02x?}"
            );
        }
    }

    #[test]
    fn an_event_without_its_required_parts_is_an_error_naming_the_relation() {
        let decode_event =
            |e: event::Event| decode(&Bytes::from(Event { event: Some(e) }.to_payload()));
        assert_eq!(decode(&Bytes::new()), Err(WireError::NoEvent));
        assert_eq!(
            decode_event(event::Event::Delete(Delete {
                relation_oid: 7,
                old: None
            })),
            Err(WireError::NoOldTuple { relation_oid: 7 })
        );
        assert_eq!(
            decode_event(event::Event::Insert(Insert {
                relation_oid: 7,
                new: None
            })),
            Err(WireError::NoNewTuple {
                kind: "insert",
                relation_oid: 7
            })
        );
        let e = decode_event(event::Event::Update(Update {
            relation_oid: 7,
            old: None,
            new: Some(Tuple {
                values: vec![Value::int(1), Value { kind: None }],
            }),
        }))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "protobuf update of relation 7 has an empty value at column 1"
        );
        let e = decode_event(event::Event::Relation(Relation {
            oid: 9,
            replica_identity: 42,
            ..Relation::default()
        }))
        .unwrap_err();
        assert_eq!(
            e,
            WireError::BadReplicaIdentity {
                relation_oid: 9,
                value: 42
            }
        );
        // A pgoutput payload is not an event.
        let pgoutput_begin = &fixtures::raw(fixtures::DEFAULT_IDENTITY)[0];
        assert!(decode(&Bytes::copy_from_slice(pgoutput_begin)).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&Bytes::from(bytes));
        }
    }
}
