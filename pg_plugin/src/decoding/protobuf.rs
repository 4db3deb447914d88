//! `format 'protobuf'`: the events of proto/pg2dns.proto, what `pg2dns run`
//! reads from a slot of this plugin (`[database] plugin = "pg2dns"`).
//!
//! The format is chosen by `-o format=protobuf`, or by a client that
//! passes pgoutput's options (`proto_version`, `publication_names`,
//! `messages`): `pg2dns run` starts a slot of either plugin the same way.
//! It mirrors pgoutput protocol 1, so that the stream decodes both into the
//! same messages (`pg2dns_decoder::wire`):
//!
//! - only the tables of the publications named in `publication_names`
//!   (directly, `FOR ALL TABLES` or `FOR TABLES IN SCHEMA`) are sent;
//!   a change to a partition published through its root is refused with
//!   an error naming it (pgoutput would send it as the root table;
//!   use pgoutput for partitioned sources);
//! - a transaction that changed none of them is not sent at all (as
//!   pgoutput does since PostgreSQL 15);
//! - a `Relation` precedes the first change of a table in the session and
//!   follows any change of its layout; generated columns are left out;
//! - `int2`, `int4`, `int8` travel as integers and `bool` as a boolean,
//!   every other type as its output function's text;
//! - transactional `pg_logical_emit_message`s are sent with `messages
//!   'true'`; non-transactional ones are not.
//!
//! Each event is one `CopyData` message (the framework writes them at
//! commit, in order), encoded without a length prefix.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

use pgrx::pg_sys;
use prost::Message as _;

use pg2dns_decoder::wire::{self as w, event::Event as E};

use super::{Change, DecodingError, Format, Options, Relation, ReplicaIdentity, Tuple, Txn, Value};

/// The options `pg2dns run` (through pgwire-replication) and an operator
/// may pass.
const KNOWN: [&str; 5] = [
    "format",
    "proto_version",
    "publication_names",
    "messages",
    "binary",
];

/// Builds the protobuf format from the client's options.
pub fn build(options: &Options) -> Result<Box<dyn Format>, DecodingError> {
    options.only(&KNOWN)?;
    if let Some(v) = options.value("proto_version")? {
        if v != "1" {
            return Err(DecodingError::option(format!(
                "proto_version {v:?}: format protobuf mirrors pgoutput protocol version 1 only"
            )));
        }
    }
    if let Some(v) = options.value("binary")? {
        if !matches!(v, "false" | "off" | "0") {
            return Err(DecodingError::option(format!(
                "binary {v:?}: format protobuf types its values itself; leave binary off"
            )));
        }
    }
    let publications: Vec<CString> = options
        .value("publication_names")?
        .ok_or_else(|| {
            DecodingError::option(
                "format protobuf needs publication_names (e.g. -o publication_names=pg2dns)".into(),
            )
        })?
        .split(',')
        .map(|p| p.trim().trim_matches('"').to_owned())
        .filter(|p| !p.is_empty())
        .map(|p| {
            CString::new(p.as_str())
                .map_err(|_| DecodingError::option(format!("publication name {p:?} has a NUL")))
        })
        .collect::<Result<_, _>>()?;
    let messages = match options.get("messages") {
        None => false,
        Some(None) => true,
        Some(Some(v)) => matches!(v, "true" | "on" | "1"),
    };
    Ok(Box::new(Protobuf {
        publications,
        messages,
        described: HashMap::new(),
        published: RefCell::new(HashMap::new()),
        out: Vec::new(),
        changed: false,
    }))
}

/// Whether a table's changes are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Published {
    Yes,
    No,
    /// A partition of a published partitioned table.
    ThroughRoot,
}

/// The protobuf format's state for one decoding session.
pub struct Protobuf {
    publications: Vec<CString>,
    messages: bool,
    /// The relations described to the client in this session, as described.
    described: HashMap<u32, Relation>,
    /// Publication membership, looked up once per table and transaction
    /// (in the transaction's historic catalog snapshot).
    published: RefCell<HashMap<u32, Published>>,
    /// This transaction's events.
    out: Vec<Vec<u8>>,
    /// Whether the transaction has sent anything but its Begin.
    changed: bool,
}

impl Protobuf {
    fn push(&mut self, event: E) {
        self.out
            .push(w::Event { event: Some(event) }.encode_to_vec());
    }

    /// Sends the relation's layout unless the client has it already.
    fn describe(&mut self, relation: &Relation) {
        if self.described.get(&relation.oid) == Some(relation) {
            return;
        }
        self.push(E::Relation(w::Relation {
            oid: relation.oid,
            namespace: relation.namespace.clone(),
            name: relation.name.clone(),
            replica_identity: match relation.identity {
                ReplicaIdentity::Default => w::ReplicaIdentity::Default,
                ReplicaIdentity::Nothing => w::ReplicaIdentity::Nothing,
                ReplicaIdentity::Full => w::ReplicaIdentity::Full,
                ReplicaIdentity::Index => w::ReplicaIdentity::Index,
            } as i32,
            columns: relation
                .columns
                .iter()
                .map(|c| w::Column {
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    type_modifier: c.typmod,
                    is_key: c.is_key,
                })
                .collect(),
        }));
        self.described.insert(relation.oid, relation.clone());
    }

    fn membership(&self, relation: &Relation) -> Published {
        if let Some(p) = self.published.borrow().get(&relation.oid) {
            return *p;
        }
        // SAFETY: called from a decoding callback, inside the transaction
        // PostgreSQL sets up with the historic catalog snapshot.
        let p = unsafe { membership(relation.oid, &self.publications) };
        self.published.borrow_mut().insert(relation.oid, p);
        p
    }
}

/// Looks `relid` up in the publications named `names`.
unsafe fn membership(relid: u32, names: &[CString]) -> Published {
    let oid = pg_sys::Oid::from(relid);
    let direct = pg_sys::GetRelationPublications(oid);
    let schema = pg_sys::GetSchemaPublications(pg_sys::get_rel_namespace(oid));
    let partition = pg_sys::get_rel_relispartition(oid);
    for name in names {
        // Raises "publication … does not exist", as pgoutput does.
        let publication = pg_sys::GetPublicationByName(name.as_ptr(), false);
        let pub_oid = (*publication).oid;
        if (*publication).alltables
            || pg_sys::list_member_oid(direct, pub_oid)
            || pg_sys::list_member_oid(schema, pub_oid)
        {
            return Published::Yes;
        }
        if partition {
            let leaves = pg_sys::GetPublicationRelations(
                pub_oid,
                pg_sys::PublicationPartOpt::PUBLICATION_PART_LEAF,
            );
            if pg_sys::list_member_oid(leaves, oid) {
                return Published::ThroughRoot;
            }
        }
    }
    Published::No
}

/// A tuple's values, typed by their columns' types.
fn tuple(relation: &Relation, t: &Tuple) -> w::Tuple {
    w::Tuple {
        values: t
            .values
            .iter()
            .zip(relation.columns.iter())
            .map(|(v, c)| match v {
                Value::Null => w::Value::null(),
                Value::UnchangedToast => w::Value::unchanged_toast(),
                Value::Text(text) => w::typed(c.type_oid, text),
            })
            .collect(),
    }
}

impl Format for Protobuf {
    fn binary(&self) -> bool {
        true
    }

    fn wants(&self, relation: &Relation) -> bool {
        // Before the framework deforms the tuples: pg2dns's own tables
        // (row state, progress) change in every checkpoint.
        self.membership(relation) != Published::No
    }

    fn begin(&mut self, txn: &Txn) -> Result<(), DecodingError> {
        self.out.clear();
        self.published.borrow_mut().clear();
        self.changed = false;
        self.push(E::Begin(w::Begin {
            final_lsn: txn.commit_lsn,
            commit_time_micros: txn.commit_time,
            xid: txn.xid,
        }));
        Ok(())
    }

    fn change(
        &mut self,
        _lsn: u64,
        relation: &Relation,
        change: Change,
    ) -> Result<(), DecodingError> {
        match self.membership(relation) {
            Published::No => return Ok(()),
            Published::ThroughRoot => {
                return Err(DecodingError::unsupported(
                    format!(
                        "{} is a partition published through its root: format protobuf does not send partitions as their root",
                        relation.qualified_name()
                    ),
                    "use plugin pgoutput for partitioned source tables ([database] plugin = \"pgoutput\", docs/plugin.md)".into(),
                ))
            }
            Published::Yes => {}
        }
        let full = relation.identity == ReplicaIdentity::Full;
        let event = match change {
            Change::Insert { new } => E::Insert(w::Insert {
                relation_oid: relation.oid,
                new: Some(tuple(relation, &new)),
            }),
            Change::Update { old, new } => E::Update(w::Update {
                relation_oid: relation.oid,
                old: old.map(|o| {
                    let t = tuple(relation, &o);
                    if full {
                        w::update::Old::OldRow(t)
                    } else {
                        w::update::Old::OldKey(t)
                    }
                }),
                new: Some(tuple(relation, &new)),
            }),
            Change::Delete { old } => {
                // Without an old tuple (REPLICA IDENTITY NOTHING) pgoutput
                // sends nothing either.
                let Some(old) = old else { return Ok(()) };
                let t = tuple(relation, &old);
                E::Delete(w::Delete {
                    relation_oid: relation.oid,
                    old: Some(if full {
                        w::delete::Old::OldRow(t)
                    } else {
                        w::delete::Old::OldKey(t)
                    }),
                })
            }
        };
        self.describe(relation);
        self.push(event);
        self.changed = true;
        Ok(())
    }

    fn truncate(&mut self, _lsn: u64, relations: &[Relation]) -> Result<(), DecodingError> {
        let mut oids = Vec::new();
        for relation in relations {
            if self.membership(relation) == Published::Yes {
                self.describe(relation);
                oids.push(relation.oid);
            }
        }
        if !oids.is_empty() {
            self.push(E::Truncate(w::Truncate {
                cascade: false,
                restart_identity: false,
                relation_oids: oids,
            }));
            self.changed = true;
        }
        Ok(())
    }

    fn message(&mut self, lsn: u64, prefix: &str, content: &[u8]) -> Result<(), DecodingError> {
        if self.messages {
            self.push(E::Message(w::LogicalMessage {
                transactional: true,
                lsn,
                prefix: prefix.to_owned(),
                content: content.to_vec().into(),
            }));
            self.changed = true;
        }
        Ok(())
    }

    fn commit(&mut self, txn: &Txn, _slot: &str) -> Result<Vec<Vec<u8>>, DecodingError> {
        if !self.changed {
            self.out.clear();
            return Ok(Vec::new());
        }
        self.push(E::Commit(w::Commit {
            commit_lsn: txn.commit_lsn,
            end_lsn: txn.end_lsn,
            commit_time_micros: txn.commit_time,
        }));
        Ok(std::mem::take(&mut self.out))
    }
}
