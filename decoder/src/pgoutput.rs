//! Decoding of `pgoutput` logical replication messages, protocol version 1.
//!
//! # Why this module exists
//!
//! pg2dns reads changes through PostgreSQL's built-in `pgoutput` plugin, because
//! a stock server needs no extension for it (docs/design.md §3). Each `XLogData`
//! payload on the replication connection is exactly one pgoutput message; this
//! module turns one such payload into a [`Message`] and does nothing else: no
//! I/O, no state. Transaction structure and the relation cache live in
//! [`crate::txn`].
//!
//! # What we rely on
//!
//! The layouts follow "Logical Replication Message Formats" in the PostgreSQL
//! documentation (chapter 55.9 in PostgreSQL 15). The sentences we depend on:
//!
//! - Begin and Commit: "Int64 (TimestampTz) Commit timestamp of the
//!   transaction. The value is in number of microseconds since PostgreSQL
//!   epoch (2000-01-01)." Timestamps are kept as those raw microseconds.
//! - Origin: "Note that there can be multiple Origin messages inside a single
//!   transaction."
//! - Relation: "String Namespace (empty string for pg_catalog)", followed by
//!   "Int8 Replica identity setting for the relation (same as
//!   relreplident in pg_class)" and, per column, "Int8 Flags for the column.
//!   Currently can be either 0 for no flags or 1 which marks the column as part
//!   of the key."
//! - Update: "Byte1('K') Identifies the following TupleData submessage as a
//!   key. This field is optional and is only present if the update changed
//!   data in any of the column(s) that are part of the REPLICA IDENTITY index.
//!   Byte1('O') Identifies the following TupleData submessage as an old
//!   tuple. This field is optional and is only present if table in which the
//!   update happened has REPLICA IDENTITY set to FULL." and "The Update
//!   message may contain either a 'K' message part or an 'O' message part or
//!   neither of them, but never both of them."
//! - TupleData: "Byte1('n') Identifies the data as NULL value. Or Byte1('u')
//!   Identifies unchanged TOASTed value (the actual value is not sent). Or
//!   Byte1('t') Identifies the data as text formatted value. Or Byte1('b')
//!   Identifies the data as binary formatted value."
//! - Truncate: "Int8 Option bits for TRUNCATE: 1 for CASCADE, 2 for RESTART
//!   IDENTITY".
//! - Message: "Int8 Flags; Either 0 for no flags or 1 if the logical decoding
//!   message is transactional."
//!
//! Only protocol version 1 is accepted: pg2dns keeps `streaming` off so that
//! only committed transactions arrive (docs/design.md §4). The streaming messages of
//! protocol 2 and later (`S`, `E`, `c`, `A`) and the two-phase messages of
//! protocol 3 are [`PgOutputError::UnknownTag`], as is anything else.
//!
//! # Malformed input
//!
//! [`parse`] never panics and never allocates more than the input can justify:
//! every read is bounds-checked, counts from the wire only size a vector up to
//! what the remaining bytes could hold, and a message must be consumed exactly
//! (extra bytes are [`PgOutputError::TrailingBytes`]). Errors name the message
//! tag and the byte offset where decoding stopped.
//!
//! Names (schemas, tables, columns, types, origins, message prefixes) are
//! decoded as UTF-8, so the database must use the UTF-8 encoding; anything else
//! is a [`PgOutputError::BadString`]. Column values are kept as raw bytes.

use std::fmt;

use bytes::Bytes;

use crate::lsn::Lsn;

/// Decodes one pgoutput message, the payload of one `XLogData` message.
///
/// Column values and logical message contents are copied out of `buf`; use
/// [`parse_bytes`] to share them with a [`Bytes`] buffer instead.
pub fn parse(buf: &[u8]) -> Result<Message, PgOutputError> {
    Reader::new(buf, None).message()
}

/// Like [`parse`], but column values and message contents are zero-copy
/// slices of `buf`.
pub fn parse_bytes(buf: &Bytes) -> Result<Message, PgOutputError> {
    Reader::new(buf, Some(buf)).message()
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: the transaction committed.
    Commit(Commit),
    /// `O`: the transaction was replicated into this server from another one.
    Origin(Origin),
    /// `R`: the layout of a table, sent before its first change in a session and
    /// again after it changed.
    Relation(Relation),
    /// `Y`: a user-defined type used by a column of a following Relation.
    Type(TypeInfo),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: tables were truncated.
    Truncate(Truncate),
    /// `M`: a message from `pg_logical_emit_message` (only with `messages 'true'`).
    Message(LogicalMessage),
}

impl Message {
    /// The tag byte that identifies this message on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            Message::Begin(_) => b'B',
            Message::Commit(_) => b'C',
            Message::Origin(_) => b'O',
            Message::Relation(_) => b'R',
            Message::Type(_) => b'Y',
            Message::Insert(_) => b'I',
            Message::Update(_) => b'U',
            Message::Delete(_) => b'D',
            Message::Truncate(_) => b'T',
            Message::Message(_) => b'M',
        }
    }
}

/// `B`: the start of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record (equal to [`Commit::commit_lsn`]).
    pub final_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 00:00 UTC. For a transaction
    /// applied with a replication origin this is the origin's commit time.
    pub commit_time_micros: i64,
    /// The transaction id.
    pub xid: u32,
}

/// `C`: the end of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by PostgreSQL so far (always 0).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: the LSN to confirm once the transaction
    /// has been applied.
    pub end_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 00:00 UTC.
    pub commit_time_micros: i64,
}

/// `O`: the transaction came from another server through a replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// The replication origin's name.
    pub name: String,
}

/// `R`: the layout of a published table as the following changes encode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID, which changes refer to.
    pub oid: u32,
    /// The schema name; PostgreSQL sends an empty string for `pg_catalog`.
    pub namespace: String,
    /// The table name.
    pub name: String,
    /// Which old values UPDATE and DELETE carry.
    pub replica_identity: ReplicaIdentity,
    /// The published columns in the order tuples list their values.
    pub columns: Vec<ColumnInfo>,
}

impl Relation {
    /// The position of the column called `name` (exact, case-sensitive match),
    /// which is also the position of its value in a tuple.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `namespace.name`, the way an operator would type it.
    pub fn qualified_name(&self) -> String {
        let namespace = if self.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.namespace
        };
        format!("{namespace}.{}", self.name)
    }
}

/// A table's `REPLICA IDENTITY`, which decides what old values UPDATE and
/// DELETE carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key. DELETE carries the key; UPDATE carries the old key
    /// only when the key changed.
    Default,
    /// `n`: nothing; UPDATE and DELETE on a published table fail in PostgreSQL.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The `pg_class.relreplident` letter.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Part of the replica identity (every column under `REPLICA IDENTITY FULL`).
    pub is_key: bool,
    /// The column name.
    pub name: String,
    /// The column's type OID (`pg_type.oid`).
    pub type_oid: u32,
    /// The type modifier (`atttypmod`), -1 when there is none.
    pub type_modifier: i32,
}

/// `Y`: the name of a user-defined type that a following Relation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// The type's OID.
    pub oid: u32,
    /// The schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// The type name.
    pub name: String,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value that the UPDATE did not change; the value itself is
    /// not sent. It is not NULL: the column keeps its previous value.
    UnchangedToast,
    /// `t`: the value in the type's text output format (server encoding).
    Text(Bytes),
    /// `b`: the value in the type's binary format (only with `binary 'true'`).
    Binary(Bytes),
}

/// `I`: a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The OID of the table, described by an earlier Relation message.
    pub relation_oid: u32,
    /// The new row's values.
    pub new: Vec<Value>,
}

/// `U`: a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The OID of the table, described by an earlier Relation message.
    pub relation_oid: u32,
    /// The old key (when it changed) or the old row (under `REPLICA IDENTITY
    /// FULL`); `None` under the default identity when the key did not change.
    pub old: Option<OldRow>,
    /// The row's new values; unchanged TOASTed values are [`Value::UnchangedToast`].
    pub new: Vec<Value>,
}

/// The old values carried by an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow {
    /// `K`: the replica identity columns; the other columns are [`Value::Null`].
    Key(Vec<Value>),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Vec<Value>),
}

impl OldRow {
    /// The values, whichever kind of old row this is.
    pub fn values(&self) -> &[Value] {
        match self {
            OldRow::Key(v) | OldRow::Full(v) => v,
        }
    }

    /// The values, whichever kind of old row this is.
    pub fn into_values(self) -> Vec<Value> {
        match self {
            OldRow::Key(v) | OldRow::Full(v) => v,
        }
    }
}

/// `D`: a deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The OID of the table, described by an earlier Relation message.
    pub relation_oid: u32,
    /// The deleted row's key or, under `REPLICA IDENTITY FULL`, all its values.
    pub old: OldRow,
}

/// `T`: tables were emptied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `TRUNCATE … CASCADE` (option bit 1).
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY` (option bit 2).
    pub restart_identity: bool,
    /// The truncated tables, each described by an earlier Relation message.
    pub relation_oids: Vec<u32>,
}

/// `M`: a message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Emitted with `transactional => true`: it arrives inside its transaction,
    /// and only if that transaction committed. A non-transactional message
    /// arrives on its own, as soon as it is decoded.
    pub transactional: bool,
    /// The LSN PostgreSQL reports for the message: the end of its WAL record.
    pub lsn: Lsn,
    /// The prefix chosen by the emitter, used to recognise its own messages.
    pub prefix: String,
    /// The message body.
    pub content: Bytes,
}

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgOutputError {
    /// The payload was empty: not even a tag byte.
    #[error("empty pgoutput message")]
    Empty,
    /// The tag byte names no protocol-1 message.
    #[error("unknown pgoutput message tag {}", Tag(*tag))]
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },
    /// The message ended before a field it must contain.
    #[error("pgoutput {} message truncated at offset {offset}: {needed} more bytes needed", Tag(*tag))]
    Truncated {
        /// The message's tag byte.
        tag: u8,
        /// Where the missing field starts.
        offset: usize,
        /// How many bytes were missing for that field.
        needed: usize,
    },
    /// A string had no NUL terminator or was not UTF-8.
    #[error("pgoutput {} message has a bad string at offset {offset}: {reason}", Tag(*tag))]
    BadString {
        /// The message's tag byte.
        tag: u8,
        /// Where the string starts.
        offset: usize,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A tuple marker was not one the message allows (`N`, `K`, `O`).
    #[error("pgoutput {} message has tuple kind {} at offset {offset}", Tag(*tag), Tag(*kind))]
    BadTupleKind {
        /// The message's tag byte.
        tag: u8,
        /// The unexpected marker byte.
        kind: u8,
        /// Where the marker is.
        offset: usize,
    },
    /// A column value kind was not `n`, `u`, `t` or `b`.
    #[error("pgoutput {} message has column value kind {} at offset {offset}", Tag(*tag), Tag(*kind))]
    BadValueKind {
        /// The message's tag byte.
        tag: u8,
        /// The unexpected kind byte.
        kind: u8,
        /// Where the kind byte is.
        offset: usize,
    },
    /// A Relation message had an unknown replica identity letter.
    #[error("pgoutput relation message has replica identity {} at offset {offset}", Tag(*identity))]
    BadReplicaIdentity {
        /// The unexpected byte.
        identity: u8,
        /// Where it is.
        offset: usize,
    },
    /// A length field was negative.
    #[error("pgoutput {} message has negative length {len} at offset {offset}", Tag(*tag))]
    NegativeLength {
        /// The message's tag byte.
        tag: u8,
        /// Where the length field is.
        offset: usize,
        /// The length read.
        len: i32,
    },
    /// The message was decoded completely but bytes were left over.
    #[error("pgoutput {} message has {len} trailing bytes at offset {offset}", Tag(*tag))]
    TrailingBytes {
        /// The message's tag byte.
        tag: u8,
        /// Where the extra bytes start.
        offset: usize,
        /// How many extra bytes there are.
        len: usize,
    },
}

/// Prints a tag or marker byte as `'B'` when printable, else as `0x42`.
struct Tag(u8);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// A bounds-checked cursor over one message.
struct Reader<'a> {
    buf: &'a [u8],
    /// When set, `buf` is this buffer's contents and values are sliced from it.
    shared: Option<&'a Bytes>,
    pos: usize,
    tag: u8,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], shared: Option<&'a Bytes>) -> Self {
        Reader {
            buf,
            shared,
            pos: 0,
            tag: 0,
        }
    }

    fn message(mut self) -> Result<Message, PgOutputError> {
        let tag = *self.buf.first().ok_or(PgOutputError::Empty)?;
        self.tag = tag;
        self.pos = 1;
        let msg = match tag {
            b'B' => Message::Begin(Begin {
                final_lsn: self.lsn()?,
                commit_time_micros: self.i64()?,
                xid: self.u32()?,
            }),
            b'C' => Message::Commit(Commit {
                flags: self.u8()?,
                commit_lsn: self.lsn()?,
                end_lsn: self.lsn()?,
                commit_time_micros: self.i64()?,
            }),
            b'O' => Message::Origin(Origin {
                commit_lsn: self.lsn()?,
                name: self.string()?,
            }),
            b'R' => Message::Relation(self.relation()?),
            b'Y' => Message::Type(TypeInfo {
                oid: self.u32()?,
                namespace: self.string()?,
                name: self.string()?,
            }),
            b'I' => {
                let relation_oid = self.u32()?;
                self.expect_marker(b"N")?;
                Message::Insert(Insert {
                    relation_oid,
                    new: self.tuple()?,
                })
            }
            b'U' => {
                let relation_oid = self.u32()?;
                let (old, new) = match self.expect_marker(b"KON")? {
                    b'N' => (None, self.tuple()?),
                    marker => {
                        let old = self.old_row(marker)?;
                        self.expect_marker(b"N")?;
                        (Some(old), self.tuple()?)
                    }
                };
                Message::Update(Update {
                    relation_oid,
                    old,
                    new,
                })
            }
            b'D' => {
                let relation_oid = self.u32()?;
                let marker = self.expect_marker(b"KO")?;
                Message::Delete(Delete {
                    relation_oid,
                    old: self.old_row(marker)?,
                })
            }
            b'T' => {
                let count = self.u32()?;
                let options = self.u8()?;
                let mut relation_oids = self.vec_for(count as usize, 4);
                for _ in 0..count {
                    relation_oids.push(self.u32()?);
                }
                Message::Truncate(Truncate {
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                    relation_oids,
                })
            }
            b'M' => {
                let flags = self.u8()?;
                let lsn = self.lsn()?;
                let prefix = self.string()?;
                let len = self.len()?;
                Message::Message(LogicalMessage {
                    transactional: flags & 1 != 0,
                    lsn,
                    prefix,
                    content: self.bytes(len)?,
                })
            }
            tag => return Err(PgOutputError::UnknownTag { tag }),
        };
        if self.pos < self.buf.len() {
            return Err(PgOutputError::TrailingBytes {
                tag,
                offset: self.pos,
                len: self.buf.len() - self.pos,
            });
        }
        Ok(msg)
    }

    fn relation(&mut self) -> Result<Relation, PgOutputError> {
        let oid = self.u32()?;
        let namespace = self.string()?;
        let name = self.string()?;
        let offset = self.pos;
        let identity = self.u8()?;
        let replica_identity = ReplicaIdentity::from_byte(identity)
            .ok_or(PgOutputError::BadReplicaIdentity { identity, offset })?;
        let count = self.u16()?;
        // Each column needs at least flags, an empty name, type and modifier.
        let mut columns = self.vec_for(count.into(), 10);
        for _ in 0..count {
            columns.push(ColumnInfo {
                is_key: self.u8()? & 1 != 0,
                name: self.string()?,
                type_oid: self.u32()?,
                type_modifier: self.i32()?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn old_row(&mut self, marker: u8) -> Result<OldRow, PgOutputError> {
        let values = self.tuple()?;
        Ok(if marker == b'K' {
            OldRow::Key(values)
        } else {
            OldRow::Full(values)
        })
    }

    /// TupleData: Int16 column count, then per column a kind byte and, for
    /// `t` and `b`, an Int32 length and the bytes.
    fn tuple(&mut self) -> Result<Vec<Value>, PgOutputError> {
        let count = self.u16()?;
        let mut values = self.vec_for(count.into(), 1);
        for _ in 0..count {
            let offset = self.pos;
            let value = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => {
                    let len = self.len()?;
                    Value::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.len()?;
                    Value::Binary(self.bytes(len)?)
                }
                kind => {
                    return Err(PgOutputError::BadValueKind {
                        tag: self.tag,
                        kind,
                        offset,
                    })
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    /// A vector for `count` items of at least `min_size` bytes each, with no more
    /// capacity than the rest of the message could fill.
    fn vec_for<T>(&self, count: usize, min_size: usize) -> Vec<T> {
        let room = self.buf.len().saturating_sub(self.pos) / min_size;
        Vec::with_capacity(count.min(room))
    }

    fn expect_marker(&mut self, allowed: &[u8]) -> Result<u8, PgOutputError> {
        let offset = self.pos;
        let kind = self.u8()?;
        if allowed.contains(&kind) {
            Ok(kind)
        } else {
            Err(PgOutputError::BadTupleKind {
                tag: self.tag,
                kind,
                offset,
            })
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], PgOutputError> {
        let bytes = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end))
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(PgOutputError::Truncated {
                tag: self.tag,
                offset: self.pos,
                needed: N - self.buf.len().saturating_sub(self.pos).min(N),
            })?;
        self.pos += N;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, PgOutputError> {
        Ok(u8::from_be_bytes(self.take()?))
    }

    fn u16(&mut self) -> Result<u16, PgOutputError> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, PgOutputError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn i32(&mut self) -> Result<i32, PgOutputError> {
        Ok(i32::from_be_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, PgOutputError> {
        Ok(i64::from_be_bytes(self.take()?))
    }

    fn lsn(&mut self) -> Result<Lsn, PgOutputError> {
        Ok(Lsn::new(u64::from_be_bytes(self.take()?)))
    }

    /// An Int32 length that must not be negative.
    fn len(&mut self) -> Result<usize, PgOutputError> {
        let offset = self.pos;
        let len = self.i32()?;
        usize::try_from(len).map_err(|_| PgOutputError::NegativeLength {
            tag: self.tag,
            offset,
            len,
        })
    }

    fn bytes(&mut self, len: usize) -> Result<Bytes, PgOutputError> {
        let start = self.pos;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.buf.len())
            .ok_or(PgOutputError::Truncated {
                tag: self.tag,
                offset: start,
                needed: len - self.buf.len().saturating_sub(start).min(len),
            })?;
        self.pos = end;
        Ok(match self.shared {
            Some(shared) => shared.slice(start..end),
            None => Bytes::copy_from_slice(self.buf.get(start..end).unwrap_or_default()),
        })
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, PgOutputError> {
        let offset = self.pos;
        let bad = |reason| PgOutputError::BadString {
            tag: self.tag,
            offset,
            reason,
        };
        let rest = self.buf.get(offset..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(bad("no NUL terminator"))?;
        let text = rest.get(..nul).unwrap_or_default();
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
        self.pos = offset + nul + 1;
        Ok(text.to_owned())
    }
}

/// The captured fixtures, shared with the `txn` tests.
#[cfg(test)]
pub(crate) mod fixtures {
    /// Each fixture file: `#` comments naming the SQL, then one hex message a line.
    pub const ALL: [(&str, &str); 9] = [
        ("default_identity", DEFAULT_IDENTITY),
        ("full_identity", FULL_IDENTITY),
        ("toast_unchanged", TOAST_UNCHANGED),
        ("add_column", ADD_COLUMN),
        ("messages", MESSAGES),
        ("truncate", TRUNCATE),
        ("enum_type", ENUM_TYPE),
        ("origin", ORIGIN),
        ("binary", BINARY),
    ];
    pub const DEFAULT_IDENTITY: &str =
        include_str!("../tests/fixtures/pgoutput/default_identity.hex");
    pub const FULL_IDENTITY: &str = include_str!("../tests/fixtures/pgoutput/full_identity.hex");
    pub const TOAST_UNCHANGED: &str =
        include_str!("../tests/fixtures/pgoutput/toast_unchanged.hex");
    pub const ADD_COLUMN: &str = include_str!("../tests/fixtures/pgoutput/add_column.hex");
    pub const MESSAGES: &str = include_str!("../tests/fixtures/pgoutput/messages.hex");
    pub const TRUNCATE: &str = include_str!("../tests/fixtures/pgoutput/truncate.hex");
    pub const ENUM_TYPE: &str = include_str!("../tests/fixtures/pgoutput/enum_type.hex");
    pub const ORIGIN: &str = include_str!("../tests/fixtures/pgoutput/origin.hex");
    pub const BINARY: &str = include_str!("../tests/fixtures/pgoutput/binary.hex");

    /// The raw messages of one fixture file.
    pub fn raw(fixture: &str) -> Vec<Vec<u8>> {
        fixture
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                (0..l.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("fixture is hex"))
                    .collect()
            })
            .collect()
    }

    /// The parsed messages of one fixture file.
    pub fn parsed(fixture: &str) -> Vec<super::Message> {
        raw(fixture)
            .iter()
            .map(|m| super::parse(m).expect("fixture message parses"))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::fixtures::{self, raw};
    use super::*;
    use proptest::prelude::*;

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn every_captured_message_parses_and_is_consumed_exactly() {
        for (name, fixture) in fixtures::ALL {
            let messages = raw(fixture);
            assert!(!messages.is_empty(), "{name} has no messages");
            for (i, m) in messages.iter().enumerate() {
                let parsed = parse(m).unwrap_or_else(|e| panic!("{name} message {i}: {e}"));
                assert_eq!(parsed.tag(), m[0], "{name} message {i}");
                assert_eq!(
                    encode(&parsed),
                    *m,
                    "{name} message {i} re-encodes to its bytes"
                );
            }
        }
    }

    #[test]
    fn begin_and_commit_carry_the_lsns_and_xid_postgresql_reported() {
        let msgs = fixtures::parsed(fixtures::DEFAULT_IDENTITY);
        let Message::Begin(begin) = &msgs[0] else {
            panic!("{:?}", msgs[0])
        };
        let Message::Commit(commit) = &msgs[4] else {
            panic!("{:?}", msgs[4])
        };
        assert_eq!(begin.final_lsn, lsn("0/159A240"));
        assert_eq!(begin.xid, 747);
        assert_eq!(commit.flags, 0);
        assert_eq!(commit.commit_lsn, begin.final_lsn);
        assert_eq!(commit.end_lsn, lsn("0/159A270"));
        assert_eq!(commit.commit_time_micros, begin.commit_time_micros);
        // Captured in 2025: microseconds since 2000-01-01.
        let years = begin.commit_time_micros / 1_000_000 / 86_400 / 365;
        assert!((24..30).contains(&years), "{years}");
    }

    #[test]
    fn relation_message_describes_columns_keys_and_replica_identity() {
        let msgs = fixtures::parsed(fixtures::DEFAULT_IDENTITY);
        let Message::Relation(rel) = &msgs[1] else {
            panic!("{:?}", msgs[1])
        };
        assert_eq!(rel.namespace, "public");
        assert_eq!(rel.name, "rr");
        assert_eq!(rel.qualified_name(), "public.rr");
        assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
        let cols: Vec<_> = rel
            .columns
            .iter()
            .map(|c| (c.is_key, c.name.as_str(), c.type_oid, c.type_modifier))
            .collect();
        assert_eq!(
            cols,
            [
                (true, "id", 23, -1),
                (false, "name", 25, -1),
                (false, "type", 25, -1),
                (false, "ttl", 23, -1),
                (false, "rdata", 25, -1),
            ]
        );
        assert_eq!(rel.column_index("ttl"), Some(3));
        assert_eq!(rel.column_index("TTL"), None);
    }

    #[test]
    fn insert_sends_values_as_text_and_null_as_a_marker() {
        let msgs = fixtures::parsed(fixtures::DEFAULT_IDENTITY);
        let Message::Insert(insert) = &msgs[3] else {
            panic!("{:?}", msgs[3])
        };
        assert_eq!(
            insert.new,
            [
                text("2"),
                text("mail.example.org."),
                text("A"),
                Value::Null,
                text("192.0.2.2")
            ]
        );
    }

    #[test]
    fn update_under_default_identity_has_no_old_tuple_unless_the_key_changed() {
        let msgs = fixtures::parsed(fixtures::DEFAULT_IDENTITY);
        let Message::Update(same_key) = &msgs[6] else {
            panic!("{:?}", msgs[6])
        };
        assert_eq!(same_key.old, None);
        assert_eq!(same_key.new[4], text("192.0.2.10"));
        let Message::Update(new_key) = &msgs[9] else {
            panic!("{:?}", msgs[9])
        };
        let null = Value::Null;
        assert_eq!(
            new_key.old,
            Some(OldRow::Key(vec![
                text("2"),
                null.clone(),
                null.clone(),
                null.clone(),
                null
            ]))
        );
        assert_eq!(new_key.new[0], text("3"));
    }

    #[test]
    fn delete_under_default_identity_carries_only_the_key() {
        let msgs = fixtures::parsed(fixtures::DEFAULT_IDENTITY);
        let Message::Delete(delete) = &msgs[12] else {
            panic!("{:?}", msgs[12])
        };
        let mut key = vec![Value::Null; 5];
        key[0] = text("1");
        assert_eq!(delete.old, OldRow::Key(key));
    }

    #[test]
    fn full_identity_marks_every_column_as_key_and_sends_old_rows() {
        let msgs = fixtures::parsed(fixtures::FULL_IDENTITY);
        let Message::Relation(rel) = &msgs[1] else {
            panic!("{:?}", msgs[1])
        };
        assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
        assert!(rel.columns.iter().all(|c| c.is_key));
        let Message::Update(update) = &msgs[5] else {
            panic!("{:?}", msgs[5])
        };
        let before = vec![
            text("1"),
            text("www.example.org."),
            text("A"),
            text("300"),
            text("192.0.2.1"),
        ];
        assert_eq!(update.old, Some(OldRow::Full(before)));
        assert_eq!(update.new[3], Value::Null);
        let Message::Delete(delete) = &msgs[8] else {
            panic!("{:?}", msgs[8])
        };
        let OldRow::Full(old) = &delete.old else {
            panic!("{:?}", delete.old)
        };
        assert_eq!(old[4], text("192.0.2.10"));
    }

    #[test]
    fn update_that_leaves_a_toasted_value_alone_sends_the_unchanged_marker() {
        let msgs = fixtures::parsed(fixtures::TOAST_UNCHANGED);
        let Message::Update(update) = &msgs[2] else {
            panic!("{:?}", msgs[2])
        };
        assert_eq!(update.old, None);
        assert_eq!(update.new, [text("1"), text("600"), Value::UnchangedToast]);
    }

    #[test]
    fn alter_table_add_column_sends_a_new_relation_message_mid_stream() {
        let msgs = fixtures::parsed(fixtures::ADD_COLUMN);
        let relations: Vec<_> = msgs
            .iter()
            .filter_map(|m| match m {
                Message::Relation(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(relations.len(), 2);
        assert_eq!(relations[0].oid, relations[1].oid);
        assert_eq!(relations[0].columns.len(), 2);
        let addr = &relations[1].columns[2];
        assert_eq!((addr.name.as_str(), addr.type_oid), ("addr", 869));
        // The second Relation sits inside the second transaction, before its insert.
        assert!(matches!(msgs[4], Message::Begin(_)));
        assert!(matches!(msgs[5], Message::Relation(_)));
        assert!(matches!(msgs[6], Message::Insert(_)));
    }

    #[test]
    fn logical_messages_carry_their_flag_prefix_lsn_and_content() {
        let msgs = fixtures::parsed(fixtures::MESSAGES);
        let Message::Message(outside) = &msgs[0] else {
            panic!("{:?}", msgs[0])
        };
        assert!(!outside.transactional);
        assert_eq!(outside.prefix, "pg2dns");
        assert_eq!(&outside.content[..], b"outside");
        // A non-transactional message emitted inside a transaction is decoded at
        // once, so it arrives before that transaction's Begin.
        let Message::Message(inside) = &msgs[1] else {
            panic!("{:?}", msgs[1])
        };
        assert_eq!(&inside.content[..], b"inside");
        assert!(matches!(msgs[2], Message::Begin(_)));
        let Message::Message(fence) = &msgs[5] else {
            panic!("{:?}", msgs[5])
        };
        assert!(fence.transactional);
        assert_eq!(&fence.content[..], b"fence 1");
        // A transactional message alone in its transaction; the message LSN is
        // the end of its WAL record, here the start of the commit record.
        let Message::Begin(begin) = &msgs[7] else {
            panic!("{:?}", msgs[7])
        };
        let Message::Message(binary) = &msgs[8] else {
            panic!("{:?}", msgs[8])
        };
        assert_eq!(binary.prefix, "pg2dns.fence");
        assert_eq!(&binary.content[..], [0x00, 0xff]);
        assert_eq!(binary.lsn, begin.final_lsn);
    }

    #[test]
    fn truncate_carries_its_options_and_every_truncated_table() {
        let msgs = fixtures::parsed(fixtures::TRUNCATE);
        let Message::Truncate(plain) = &msgs[2] else {
            panic!("{:?}", msgs[2])
        };
        assert!(!plain.cascade && !plain.restart_identity);
        assert_eq!(plain.relation_oids.len(), 1);
        let Message::Truncate(cascade) = &msgs[7] else {
            panic!("{:?}", msgs[7])
        };
        assert!(cascade.cascade && cascade.restart_identity);
        assert_eq!(cascade.relation_oids.len(), 2);
        assert!(cascade.relation_oids.contains(&plain.relation_oids[0]));
    }

    #[test]
    fn enum_column_makes_postgresql_send_a_type_message_first() {
        let msgs = fixtures::parsed(fixtures::ENUM_TYPE);
        let Message::Type(ty) = &msgs[1] else {
            panic!("{:?}", msgs[1])
        };
        assert_eq!(
            (ty.namespace.as_str(), ty.name.as_str()),
            ("public", "rrtype")
        );
        let Message::Relation(rel) = &msgs[2] else {
            panic!("{:?}", msgs[2])
        };
        assert_eq!(rel.columns[1].type_oid, ty.oid);
        let Message::Insert(insert) = &msgs[3] else {
            panic!("{:?}", msgs[3])
        };
        assert_eq!(insert.new, [text("1"), text("AAAA"), Value::Null]);
    }

    #[test]
    fn origin_message_follows_begin_of_a_replicated_transaction() {
        let msgs = fixtures::parsed(fixtures::ORIGIN);
        assert!(matches!(msgs[0], Message::Begin(_)));
        assert_eq!(
            msgs[1],
            Message::Origin(Origin {
                commit_lsn: lsn("1/2345678"),
                name: "upstream".into()
            })
        );
    }

    #[test]
    fn binary_option_sends_values_in_binary_format() {
        let msgs = fixtures::parsed(fixtures::BINARY);
        let Message::Insert(insert) = &msgs[2] else {
            panic!("{:?}", msgs[2])
        };
        assert_eq!(
            insert.new,
            [
                Value::Binary(Bytes::from_static(&[0, 0, 0, 1])),
                Value::Null,
                Value::Binary(Bytes::from_static(b"x.example.org.")),
            ]
        );
    }

    #[test]
    fn shared_parse_slices_the_buffer_and_agrees_with_copying_parse() {
        for (_, fixture) in fixtures::ALL {
            for m in raw(fixture) {
                let shared = Bytes::from(m.clone());
                assert_eq!(parse_bytes(&shared), parse(&m));
            }
        }
        let msgs = raw(fixtures::DEFAULT_IDENTITY);
        let buf = Bytes::from(msgs[2].clone());
        let Ok(Message::Insert(insert)) = parse_bytes(&buf) else {
            panic!()
        };
        let Value::Text(id) = &insert.new[0] else {
            panic!()
        };
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(range.contains(&(id.as_ptr() as usize)));
    }

    #[test]
    fn streaming_and_unknown_tags_are_rejected() {
        for tag in [b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', 0, 0xff] {
            assert_eq!(
                parse(&[tag, 0, 0, 0, 1]),
                Err(PgOutputError::UnknownTag { tag })
            );
        }
        assert_eq!(parse(&[]), Err(PgOutputError::Empty));
        assert_eq!(
            PgOutputError::UnknownTag { tag: b'S' }.to_string(),
            "unknown pgoutput message tag 'S'"
        );
    }

    #[test]
    fn every_strict_prefix_of_a_captured_message_is_an_error() {
        for (name, fixture) in fixtures::ALL {
            for m in raw(fixture) {
                for len in 0..m.len() {
                    let err = parse(&m[..len]).expect_err(name);
                    assert!(
                        matches!(
                            err,
                            PgOutputError::Empty
                                | PgOutputError::Truncated { .. }
                                | PgOutputError::BadString { .. }
                        ),
                        "{name} cut at {len}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn truncation_reports_tag_offset_and_missing_bytes() {
        let begin = &raw(fixtures::DEFAULT_IDENTITY)[0];
        assert_eq!(
            parse(&begin[..15]),
            Err(PgOutputError::Truncated {
                tag: b'B',
                offset: 9,
                needed: 2
            })
        );
        // A text value whose length runs past the end.
        let msg = [b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0, 0, 0, 9, b'a'];
        assert_eq!(
            parse(&msg),
            Err(PgOutputError::Truncated {
                tag: b'I',
                offset: 13,
                needed: 8
            })
        );
    }

    #[test]
    fn extra_bytes_after_a_message_are_rejected() {
        let mut commit = raw(fixtures::DEFAULT_IDENTITY)[4].clone();
        commit.push(0);
        assert_eq!(
            parse(&commit),
            Err(PgOutputError::TrailingBytes {
                tag: b'C',
                offset: 26,
                len: 1
            })
        );
    }

    #[test]
    fn bad_markers_lengths_and_strings_are_named_with_their_offset() {
        let insert = |tail: &[u8]| [&[b'I', 0, 0, 0, 1][..], tail].concat();
        assert_eq!(
            parse(&insert(&[b'K', 0, 0])),
            Err(PgOutputError::BadTupleKind {
                tag: b'I',
                kind: b'K',
                offset: 5
            })
        );
        assert_eq!(
            parse(&insert(&[b'N', 0, 1, b'x'])),
            Err(PgOutputError::BadValueKind {
                tag: b'I',
                kind: b'x',
                offset: 8
            })
        );
        assert_eq!(
            parse(&insert(&[b'N', 0, 1, b't', 0xff, 0xff, 0xff, 0xff])),
            Err(PgOutputError::NegativeLength {
                tag: b'I',
                offset: 9,
                len: -1
            })
        );
        let update = [b'U', 0, 0, 0, 1, b'K', 0, 0, b'O', 0, 0];
        assert!(matches!(
            parse(&update),
            Err(PgOutputError::BadTupleKind {
                kind: b'O',
                offset: 8,
                ..
            })
        ));
        let relation = [b'R', 0, 0, 0, 1, 0, b'r', 0, b'x', 0, 0];
        assert_eq!(
            parse(&relation),
            Err(PgOutputError::BadReplicaIdentity {
                identity: b'x',
                offset: 8
            })
        );
        let origin = [&[b'O'][..], &[0; 8], &[0xc3, 0x28, 0]].concat();
        assert_eq!(
            parse(&origin),
            Err(PgOutputError::BadString {
                tag: b'O',
                offset: 9,
                reason: "not UTF-8"
            })
        );
    }

    #[test]
    fn huge_counts_fail_as_truncated_without_allocating_for_them() {
        let truncate = [b'T', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1];
        assert!(matches!(
            parse(&truncate),
            Err(PgOutputError::Truncated { tag: b'T', .. })
        ));
        let insert = [b'I', 0, 0, 0, 1, b'N', 0xff, 0xff];
        assert!(matches!(
            parse(&insert),
            Err(PgOutputError::Truncated {
                tag: b'I',
                offset: 8,
                ..
            })
        ));
    }

    #[test]
    fn a_120_kb_value_decodes_whole() {
        let value = vec![b'v'; 120 * 1024];
        let mut msg = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
        msg.extend_from_slice(&(value.len() as i32).to_be_bytes());
        msg.extend_from_slice(&value);
        let Ok(Message::Insert(insert)) = parse(&msg) else {
            panic!()
        };
        assert_eq!(insert.new, [Value::Text(value.into())]);
    }

    /// The inverse of `parse`, to check the parser against arbitrary messages.
    fn encode(msg: &Message) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        fn tuple(out: &mut Vec<u8>, marker: u8, values: &[Value]) {
            out.push(marker);
            out.extend_from_slice(&(values.len() as u16).to_be_bytes());
            for v in values {
                match v {
                    Value::Null => out.push(b'n'),
                    Value::UnchangedToast => out.push(b'u'),
                    Value::Text(b) | Value::Binary(b) => {
                        out.push(if matches!(v, Value::Text(_)) {
                            b't'
                        } else {
                            b'b'
                        });
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        fn old(out: &mut Vec<u8>, old: &OldRow) {
            match old {
                OldRow::Key(v) => tuple(out, b'K', v),
                OldRow::Full(v) => tuple(out, b'O', v),
            }
        }
        let mut out = vec![msg.tag()];
        let o = &mut out;
        match msg {
            Message::Begin(b) => {
                o.extend_from_slice(&b.final_lsn.raw().to_be_bytes());
                o.extend_from_slice(&b.commit_time_micros.to_be_bytes());
                o.extend_from_slice(&b.xid.to_be_bytes());
            }
            Message::Commit(c) => {
                o.push(c.flags);
                o.extend_from_slice(&c.commit_lsn.raw().to_be_bytes());
                o.extend_from_slice(&c.end_lsn.raw().to_be_bytes());
                o.extend_from_slice(&c.commit_time_micros.to_be_bytes());
            }
            Message::Origin(x) => {
                o.extend_from_slice(&x.commit_lsn.raw().to_be_bytes());
                string(o, &x.name);
            }
            Message::Relation(r) => {
                o.extend_from_slice(&r.oid.to_be_bytes());
                string(o, &r.namespace);
                string(o, &r.name);
                o.push(r.replica_identity.as_byte());
                o.extend_from_slice(&(r.columns.len() as u16).to_be_bytes());
                for c in &r.columns {
                    o.push(u8::from(c.is_key));
                    string(o, &c.name);
                    o.extend_from_slice(&c.type_oid.to_be_bytes());
                    o.extend_from_slice(&c.type_modifier.to_be_bytes());
                }
            }
            Message::Type(t) => {
                o.extend_from_slice(&t.oid.to_be_bytes());
                string(o, &t.namespace);
                string(o, &t.name);
            }
            Message::Insert(i) => {
                o.extend_from_slice(&i.relation_oid.to_be_bytes());
                tuple(o, b'N', &i.new);
            }
            Message::Update(u) => {
                o.extend_from_slice(&u.relation_oid.to_be_bytes());
                if let Some(x) = &u.old {
                    old(o, x);
                }
                tuple(o, b'N', &u.new);
            }
            Message::Delete(d) => {
                o.extend_from_slice(&d.relation_oid.to_be_bytes());
                old(o, &d.old);
            }
            Message::Truncate(t) => {
                o.extend_from_slice(&(t.relation_oids.len() as u32).to_be_bytes());
                o.push(u8::from(t.cascade) | u8::from(t.restart_identity) << 1);
                for oid in &t.relation_oids {
                    o.extend_from_slice(&oid.to_be_bytes());
                }
            }
            Message::Message(m) => {
                o.push(u8::from(m.transactional));
                o.extend_from_slice(&m.lsn.raw().to_be_bytes());
                string(o, &m.prefix);
                o.extend_from_slice(&(m.content.len() as i32).to_be_bytes());
                o.extend_from_slice(&m.content);
            }
        }
        out
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z_.é]{0,12}"
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(Value::UnchangedToast),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Text(b.into())),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Binary(b.into())),
        ]
    }

    fn values() -> impl Strategy<Value = Vec<Value>> {
        prop::collection::vec(value(), 0..8)
    }

    fn old_row() -> impl Strategy<Value = OldRow> {
        prop_oneof![
            values().prop_map(OldRow::Key),
            values().prop_map(OldRow::Full)
        ]
    }

    pub(crate) fn message() -> impl Strategy<Value = Message> {
        let lsn = || any::<u64>().prop_map(Lsn::new);
        let identity = prop_oneof![
            Just(ReplicaIdentity::Default),
            Just(ReplicaIdentity::Nothing),
            Just(ReplicaIdentity::Full),
            Just(ReplicaIdentity::Index),
        ];
        let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
            |(is_key, name, type_oid, type_modifier)| ColumnInfo {
                is_key,
                name,
                type_oid,
                type_modifier,
            },
        );
        prop_oneof![
            (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, t, xid)| {
                Message::Begin(Begin {
                    final_lsn,
                    commit_time_micros: t,
                    xid,
                })
            }),
            (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(|(flags, c, e, t)| {
                Message::Commit(Commit {
                    flags,
                    commit_lsn: c,
                    end_lsn: e,
                    commit_time_micros: t,
                })
            }),
            (lsn(), name())
                .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
            (
                any::<u32>(),
                name(),
                name(),
                identity,
                prop::collection::vec(column, 0..8)
            )
                .prop_map(|(oid, namespace, name, replica_identity, columns)| {
                    Message::Relation(Relation {
                        oid,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }),
            (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| {
                Message::Type(TypeInfo {
                    oid,
                    namespace,
                    name,
                })
            }),
            (any::<u32>(), values())
                .prop_map(|(relation_oid, new)| { Message::Insert(Insert { relation_oid, new }) }),
            (any::<u32>(), prop::option::of(old_row()), values()).prop_map(
                |(relation_oid, old, new)| Message::Update(Update {
                    relation_oid,
                    old,
                    new
                })
            ),
            (any::<u32>(), old_row())
                .prop_map(|(relation_oid, old)| { Message::Delete(Delete { relation_oid, old }) }),
            (
                any::<bool>(),
                any::<bool>(),
                prop::collection::vec(any::<u32>(), 0..6)
            )
                .prop_map(|(cascade, restart_identity, relation_oids)| {
                    Message::Truncate(Truncate {
                        cascade,
                        restart_identity,
                        relation_oids,
                    })
                }),
            (
                any::<bool>(),
                lsn(),
                name(),
                prop::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(transactional, lsn, prefix, content)| {
                    Message::Message(LogicalMessage {
                        transactional,
                        lsn,
                        prefix,
                        content: content.into(),
                    })
                }),
        ]
    }

    fn any_fixture_message() -> impl Strategy<Value = Vec<u8>> {
        let all: Vec<Vec<u8>> = fixtures::ALL.iter().flat_map(|(_, f)| raw(f)).collect();
        prop::sample::select(all)
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&buf);
        }

        #[test]
        fn random_bytes_after_a_valid_tag_never_panic(
            tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
            rest in prop::collection::vec(any::<u8>(), 0..128),
        ) {
            let buf = [&[tag][..], &rest].concat();
            let _ = parse(&buf);
        }

        #[test]
        fn mutated_captured_messages_never_panic(
            msg in any_fixture_message(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut msg = msg;
            for (at, byte) in edits {
                let i = at.index(msg.len());
                msg[i] = byte;
            }
            let _ = parse(&msg);
            let _ = parse(&msg[..cut.index(msg.len() + 1)]);
        }

        #[test]
        fn encoded_messages_parse_back_to_themselves(msg in message()) {
            let buf = encode(&msg);
            prop_assert_eq!(parse(&buf), Ok(msg.clone()));
            prop_assert_eq!(parse_bytes(&Bytes::from(buf)), Ok(msg));
        }
    }
}
