//! The logical decoding output plugin: `pg_recvlogical -P pg2dns_plugin -o
//! format=…` or a replication slot created with plugin `pg2dns_plugin`.
//!
//! PostgreSQL loads the library and calls `_PG_output_plugin_init`, which
//! fills the callback table ("An output plugin is loaded by dynamically
//! loading a shared library with the output plugin's name as the library
//! base name. […] the function named `_PG_output_plugin_init` is called",
//! PostgreSQL 15, §49.6.1). pgrx has no high-level API for output plugins,
//! so this module is the one place that touches `pg_sys`'s decoding
//! structures: it reads the options, deforms tuples into [`Tuple`]s of text
//! values (each column's type output function: the text pgoutput sends),
//! and hands them to a [`Format`], which is plain Rust and writes whole
//! messages at commit.
//!
//! ```text
//!  startup ─ options ─▶ Format::new (format=nsupdate | protobuf)
//!  begin   ──────────▶ Format::begin
//!  change  ─ Relation + Change(old/new Tuple) ─▶ Format::change
//!  truncate ─ [Relation] ─▶ Format::truncate
//!  commit  ──────────▶ Format::commit ─▶ messages ─▶ OutputPluginWrite, one each
//! ```
//!
//! Only committed transactions reach the callbacks, in commit order, and a
//! slot is confirmed by its client, so an error raised here (a bad option,
//! a change the format cannot express) stops the client before it has
//! seen the transaction: nothing is lost, and the same error comes back
//! until its cause is fixed or the slot is advanced past the transaction.

use std::ffi::{c_char, CStr};
use std::sync::Arc;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgMemoryContexts, PgSqlErrorCode};

use pg2dns_decoder::row::{Cell, RowView};

pub mod nsupdate;
pub mod protobuf;

/// The options a client passes (`-o name=value`), in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options(pub Vec<(String, Option<String>)>);

impl Options {
    /// The value of option `name`, if given (`Some(None)` for a name
    /// without a value).
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }

    /// The value of option `name`, which must have one if given.
    pub fn value(&self, name: &str) -> Result<Option<&str>, DecodingError> {
        match self.get(name) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => Err(DecodingError::option(format!(
                "option {name} needs a value ({name}=…)"
            ))),
        }
    }

    /// Fails on an option none of `known` names: a typo is an error, not
    /// a silently ignored setting.
    pub fn only(&self, known: &[&str]) -> Result<(), DecodingError> {
        match self.0.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            None => Ok(()),
            Some((n, _)) => Err(DecodingError::option(format!(
                "unknown option {n:?} (this format takes: {})",
                known.join(", ")
            ))),
        }
    }
}

/// An error the plugin raises: PostgreSQL reports it to the client, which
/// stops before the transaction it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodingError {
    /// SQLSTATE.
    pub code: PgSqlErrorCode,
    /// What is wrong (lowercase, no final period).
    pub message: String,
    /// What the operator can do.
    pub hint: Option<String>,
}

impl DecodingError {
    /// A bad option (SQLSTATE 22023).
    pub fn option(message: String) -> DecodingError {
        DecodingError {
            code: PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message,
            hint: Some(
                "the options are documented in docs/plugin.md (e.g. -o format=nsupdate -o zones=example.test.)"
                    .into(),
            ),
        }
    }

    /// A change the format cannot express (SQLSTATE 0A000).
    pub fn unsupported(message: String, hint: String) -> DecodingError {
        DecodingError {
            code: PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            message,
            hint: Some(hint),
        }
    }

    fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "pg2dns_plugin decoding");
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }
}

/// `REPLICA IDENTITY` of a table: what its UPDATEs and DELETEs carry of
/// the old row ("DEFAULT records the old values of the columns of the
/// primary key […] FULL records the old values of all columns in the row",
/// ALTER TABLE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key's columns (`d`).
    Default,
    /// The columns of a chosen unique index (`i`).
    Index,
    /// Every column (`f`).
    Full,
    /// Nothing (`n`).
    Nothing,
}

impl ReplicaIdentity {
    /// As `ALTER TABLE … REPLICA IDENTITY` spells it.
    pub fn sql(self) -> &'static str {
        match self {
            ReplicaIdentity::Default => "DEFAULT",
            ReplicaIdentity::Index => "USING INDEX",
            ReplicaIdentity::Full => "FULL",
            ReplicaIdentity::Nothing => "NOTHING",
        }
    }
}

/// One column of a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type's OID.
    pub type_oid: u32,
    /// Its type modifier.
    pub typmod: i32,
    /// Part of the replica identity (every column under FULL), as
    /// pgoutput flags it.
    pub is_key: bool,
}

/// The relation a change is about, as of the change (the historic
/// catalog snapshot of the transaction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Its OID.
    pub oid: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its replica identity.
    pub identity: ReplicaIdentity,
    /// Its live columns, in order (dropped ones left out).
    pub columns: Arc<[Column]>,
}

impl Relation {
    /// `schema.table`, quoted as PostgreSQL prints identifiers.
    pub fn qualified_name(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.namespace),
            quote_ident(&self.name)
        )
    }
}

fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// One column's value in a decoded tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL (also a column a DELETE's key-only old tuple does not carry).
    Null,
    /// The type output function's text: what pgoutput sends.
    Text(String),
    /// A TOASTed value an UPDATE did not change: not in the WAL record.
    UnchangedToast,
}

/// A decoded row: its relation's column names and one value each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// The column names, shared with the relation.
    pub columns: Arc<[String]>,
    /// The values, in column order.
    pub values: Vec<Value>,
}

impl RowView for Tuple {
    fn cell(&self, column: &str) -> Option<Cell<'_>> {
        let i = self.columns.iter().position(|c| c == column)?;
        Some(match self.values.get(i)? {
            Value::Null => Cell::Null,
            Value::Text(t) => Cell::Text(t),
            Value::UnchangedToast => Cell::UnchangedToast,
        })
    }
}

/// A row change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// INSERT: the new row.
    Insert {
        /// The new row.
        new: Tuple,
    },
    /// UPDATE: the old row as far as the replica identity records it
    /// (`None` when the identity's columns did not change under DEFAULT
    /// or INDEX), and the new row.
    Update {
        /// The old row, or its identity columns.
        old: Option<Tuple>,
        /// The new row.
        new: Tuple,
    },
    /// DELETE: the old row as far as the replica identity records it.
    Delete {
        /// The old row, or its identity columns (others are NULL).
        old: Option<Tuple>,
    },
}

/// A transaction's identity and position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Txn {
    /// Its transaction ID.
    pub xid: u32,
    /// The LSN of its commit record.
    pub commit_lsn: u64,
    /// The LSN just after its commit record: where a client resumes.
    pub end_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
}

/// An output format: what the plugin writes for the transactions it
/// decodes. The framework calls it in commit order, one transaction at a
/// time: `begin`, then `change` and `truncate` for each change, `commit`.
pub trait Format {
    /// Whether the output is binary (`pg_logical_slot_get_changes` refuses
    /// a binary plugin; `pg_recvlogical` and replication connections take
    /// both).
    fn binary(&self) -> bool;

    /// Whether the format wants the changes of `relation` (the framework
    /// deforms only those).
    fn wants(&self, relation: &Relation) -> bool;

    /// A transaction starts.
    fn begin(&mut self, txn: &Txn) -> Result<(), DecodingError>;

    /// A row changed; `lsn` is the change's own WAL position.
    fn change(
        &mut self,
        lsn: u64,
        relation: &Relation,
        change: Change,
    ) -> Result<(), DecodingError>;

    /// Tables were truncated (only those [`Format::wants`]).
    fn truncate(&mut self, lsn: u64, relations: &[Relation]) -> Result<(), DecodingError>;

    /// The transaction committed: the messages to write, in order (each
    /// one is one `CopyData` message; `pg_recvlogical` prints each
    /// followed by a newline).
    fn commit(&mut self, txn: &Txn, slot: &str) -> Result<Vec<Vec<u8>>, DecodingError>;

    /// A transactional `pg_logical_emit_message` inside the transaction
    /// (non-transactional ones are not passed on).
    fn message(&mut self, _lsn: u64, _prefix: &str, _content: &[u8]) -> Result<(), DecodingError> {
        Ok(())
    }
}

/// The formats the plugin writes (`-o format=…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatName {
    /// `nsupdate`: the lines `nsupdate -k key` reads ([`nsupdate`]).
    Nsupdate,
    /// `protobuf`: length-delimited messages ([`protobuf`]).
    Protobuf,
}

impl FormatName {
    /// The names, as an operator writes them.
    pub const ALL: [&'static str; 2] = ["nsupdate", "protobuf"];

    fn parse(text: &str) -> Result<FormatName, DecodingError> {
        match text {
            "nsupdate" => Ok(FormatName::Nsupdate),
            "protobuf" => Ok(FormatName::Protobuf),
            other => Err(DecodingError::option(format!(
                "unknown format {other:?} (formats: {})",
                FormatName::ALL.join(", ")
            ))),
        }
    }
}

/// Builds the format the options name. `format` is required, except when
/// PostgreSQL only creates the slot (`is_init` with no options) and for a
/// client that passes pgoutput's `proto_version` (`pg2dns run` on a slot
/// of this plugin), which gets `protobuf`.
pub fn build(options: &Options) -> Result<Box<dyn Format>, DecodingError> {
    if options.get("format").is_none() && options.get("proto_version").is_some() {
        return protobuf::build(options);
    }
    let name = options.value("format")?.ok_or_else(|| {
        DecodingError::option(format!(
            "option format is required: -o format=<{}>",
            FormatName::ALL.join("|")
        ))
    })?;
    match FormatName::parse(name)? {
        FormatName::Nsupdate => Ok(Box::new(nsupdate::Nsupdate::new(options)?)),
        FormatName::Protobuf => protobuf::build(options),
    }
}

/// What a slot's decoding keeps between callbacks.
struct State {
    /// `None` while PostgreSQL only creates the slot.
    format: Option<Box<dyn Format>>,
    /// Reset after each change: the type output functions allocate in it.
    scratch: PgMemoryContexts,
}

/// The output plugin's entry point.
///
/// # Safety
/// Called by PostgreSQL with a valid callback table.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    let cb = &mut *cb;
    cb.startup_cb = Some(startup);
    cb.begin_cb = Some(begin);
    cb.change_cb = Some(change);
    cb.truncate_cb = Some(truncate);
    cb.commit_cb = Some(commit);
    cb.message_cb = Some(message);
    cb.shutdown_cb = Some(shutdown);
}

unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// A type output function's text, in the database's encoding, as UTF-8
/// (what pg2dns reads: its connections ask for client_encoding UTF8), so
/// that a LATIN1 database's `café` is the same record here as in the stream.
unsafe fn utf8(text: *const c_char) -> String {
    let len = CStr::from_ptr(text).to_bytes().len();
    let converted = pg_sys::pg_server_to_any(
        text,
        len as std::ffi::c_int,
        pg_sys::pg_enc::PG_UTF8 as std::ffi::c_int,
    );
    let out = cstr(converted);
    if !std::ptr::eq(converted, text) {
        pg_sys::pfree(converted.cast());
    }
    out
}

/// The options of `ctx` (a List of DefElem whose arg is a String node or
/// NULL).
unsafe fn read_options(ctx: &pg_sys::LogicalDecodingContext) -> Options {
    let list = pgrx::PgList::<pg_sys::DefElem>::from_pg(ctx.output_plugin_options);
    let mut out = Vec::new();
    for elem in list.iter_ptr() {
        let name = cstr((*elem).defname);
        let value = if (*elem).arg.is_null() {
            None
        } else {
            Some(cstr(pg_sys::defGetString(elem)))
        };
        out.push((name, value));
    }
    Options(out)
}

unsafe fn state<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut State {
    &mut *((*ctx).output_plugin_private as *mut State)
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    opt: *mut pg_sys::OutputPluginOptions,
    is_init: bool,
) {
    let options = read_options(&*ctx);
    let format = if is_init && options.0.is_empty() {
        None
    } else {
        match build(&options) {
            Ok(f) => Some(f),
            Err(e) => e.raise(),
        }
    };
    (*opt).output_type = if format.as_ref().is_some_and(|f| f.binary()) {
        pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_BINARY_OUTPUT
    } else {
        pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_TEXTUAL_OUTPUT
    };
    (*opt).receive_rewrites = false;
    let scratch =
        PgMemoryContexts::For((*ctx).context).switch_to(|_| PgMemoryContexts::new("pg2dns_plugin"));
    let state = Box::new(State { format, scratch });
    (*ctx).output_plugin_private = Box::into_raw(state) as *mut std::ffi::c_void;
}

#[pg_guard]
unsafe extern "C-unwind" fn shutdown(ctx: *mut pg_sys::LogicalDecodingContext) {
    let private = (*ctx).output_plugin_private as *mut State;
    if !private.is_null() {
        (*ctx).output_plugin_private = std::ptr::null_mut();
        drop(Box::from_raw(private));
    }
}

fn txn_of(txn: &pg_sys::ReorderBufferTXN, commit_lsn: u64) -> Txn {
    Txn {
        xid: txn.xid.into_inner(),
        commit_lsn,
        end_lsn: txn.end_lsn,
        // SAFETY: a committed transaction's union holds its commit time.
        commit_time: unsafe { txn.xact_time.commit_time },
    }
}

fn format_of(format: &mut Option<Box<dyn Format>>) -> &mut dyn Format {
    match format.as_deref_mut() {
        Some(f) => f,
        // Only slot creation runs without options, and it decodes nothing.
        None => DecodingError::option(format!(
            "option format is required: -o format=<{}>",
            FormatName::ALL.join("|")
        ))
        .raise(),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    let txn = txn_of(&*txn, (*txn).final_lsn);
    if let Err(e) = format_of(&mut state(ctx).format).begin(&txn) {
        e.raise()
    }
}

/// The relation as the historic catalog shows it.
unsafe fn relation_of(rel: pg_sys::Relation) -> Relation {
    let form = &*(*rel).rd_rel;
    let desc = (*rel).rd_att;
    let natts = (*desc).natts as usize;
    let attrs = (*desc).attrs.as_slice(natts);
    let full = form.relreplident as u8 == pg_sys::REPLICA_IDENTITY_FULL;
    let key = if full {
        std::ptr::null_mut()
    } else {
        pg_sys::RelationGetIndexAttrBitmap(
            rel,
            pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_IDENTITY_KEY,
        )
    };
    let columns: Vec<Column> = attrs
        .iter()
        .filter(|a| live(a))
        .map(|a| Column {
            name: cstr(a.attname.data.as_ptr()),
            type_oid: a.atttypid.to_u32(),
            typmod: a.atttypmod,
            is_key: full
                || pg_sys::bms_is_member(
                    a.attnum as i32 - pg_sys::FirstLowInvalidHeapAttributeNumber,
                    key,
                ),
        })
        .collect();
    if !key.is_null() {
        pg_sys::bms_free(key);
    }
    Relation {
        oid: (*rel).rd_id.to_u32(),
        namespace: cstr(pg_sys::get_namespace_name(form.relnamespace)),
        name: cstr(form.relname.data.as_ptr()),
        identity: match form.relreplident as u8 {
            pg_sys::REPLICA_IDENTITY_FULL => ReplicaIdentity::Full,
            pg_sys::REPLICA_IDENTITY_INDEX => ReplicaIdentity::Index,
            pg_sys::REPLICA_IDENTITY_NOTHING => ReplicaIdentity::Nothing,
            _ => ReplicaIdentity::Default,
        },
        columns: columns.into(),
    }
}

/// Whether a column is in what pgoutput publishes: neither dropped nor
/// generated ("generated columns are not replicated", PostgreSQL 15).
fn live(attr: &pg_sys::FormData_pg_attribute) -> bool {
    !attr.attisdropped && attr.attgenerated == 0
}

/// Whether a varlena datum is a TOAST pointer to data on disk: in a
/// decoded new tuple, a value the UPDATE did not change.
unsafe fn is_external_ondisk(datum: pg_sys::Datum) -> bool {
    let ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
    pgrx::varlena::varatt_is_1b_e(ptr)
        && pgrx::varlena::vartag_external(ptr) as u32 == pg_sys::vartag_external::VARTAG_ONDISK
}

/// A decoded tuple's values as text, in the relation's column order.
unsafe fn tuple_of(
    rel: pg_sys::Relation,
    names: &Arc<[String]>,
    buf: *mut pg_sys::ReorderBufferTupleBuf,
) -> Option<Tuple> {
    if buf.is_null() {
        return None;
    }
    let tuple = &mut (*buf).tuple as *mut pg_sys::HeapTupleData;
    Some(heap_tuple((*rel).rd_att, names, tuple, false))
}

/// The live column names of a tuple descriptor.
///
/// # Safety
/// `desc` is a valid tuple descriptor.
pub(crate) unsafe fn column_names(desc: pg_sys::TupleDesc) -> Arc<[String]> {
    let natts = (*desc).natts as usize;
    (*desc)
        .attrs
        .as_slice(natts)
        .iter()
        .filter(|a| !a.attisdropped)
        .map(|a| cstr(a.attname.data.as_ptr()))
        .collect()
}

/// A heap tuple's values as text (each type's output function: the text
/// pgoutput sends). In decoding (`detoast` false) an on-disk TOAST pointer
/// is [`Value::UnchangedToast`]: the value is not in the WAL record, and
/// the TOAST table is not read; a trigger (`detoast` true) reads it.
///
/// # Safety
/// `tuple` is a valid heap tuple of `desc`, and `names` its
/// [`column_names`].
pub(crate) unsafe fn heap_tuple(
    desc: pg_sys::TupleDesc,
    names: &Arc<[String]>,
    tuple: *mut pg_sys::HeapTupleData,
    detoast: bool,
) -> Tuple {
    let natts = (*desc).natts as usize;
    let attrs = (*desc).attrs.as_slice(natts);
    let mut values = Vec::with_capacity(names.len());
    for (i, attr) in attrs.iter().enumerate() {
        if !live(attr) {
            continue;
        }
        let mut isnull = false;
        let datum = pg_sys::heap_getattr(tuple, i as i32 + 1, desc, &mut isnull);
        if isnull {
            values.push(Value::Null);
            continue;
        }
        if !detoast && attr.attlen == -1 && is_external_ondisk(datum) {
            values.push(Value::UnchangedToast);
            continue;
        }
        let mut output = pg_sys::Oid::INVALID;
        let mut varlena = false;
        pg_sys::getTypeOutputInfo(attr.atttypid, &mut output, &mut varlena);
        let text = pg_sys::OidOutputFunctionCall(output, datum);
        values.push(Value::Text(utf8(text)));
        pg_sys::pfree(text.cast());
    }
    Tuple {
        columns: Arc::clone(names),
        values,
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    rel: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    let State { format, scratch } = state(ctx);
    let result = scratch.switch_to(|_| {
        let format = format_of(format);
        let relation = relation_of(rel);
        if !format.wants(&relation) {
            return Ok(());
        }
        let names: Arc<[String]> = relation.columns.iter().map(|c| c.name.clone()).collect();
        let tp = (*change).data.tp;
        let decoded = match (*change).action {
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_INSERT => Change::Insert {
                new: match tuple_of(rel, &names, tp.newtuple) {
                    Some(t) => t,
                    None => return Ok(()),
                },
            },
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_UPDATE => Change::Update {
                old: tuple_of(rel, &names, tp.oldtuple),
                new: match tuple_of(rel, &names, tp.newtuple) {
                    Some(t) => t,
                    None => return Ok(()),
                },
            },
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_DELETE => Change::Delete {
                old: tuple_of(rel, &names, tp.oldtuple),
            },
            _ => return Ok(()),
        };
        format.change((*change).lsn, &relation, decoded)
    });
    scratch.reset();
    if let Err(e) = result {
        e.raise()
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: std::ffi::c_int,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    let format = format_of(&mut state(ctx).format);
    let rels = std::slice::from_raw_parts(relations, nrelations.max(0) as usize);
    let wanted: Vec<Relation> = rels
        .iter()
        .map(|&r| relation_of(r))
        .filter(|r| format.wants(r))
        .collect();
    if wanted.is_empty() {
        return;
    }
    if let Err(e) = format.truncate((*change).lsn, &wanted) {
        e.raise()
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const c_char,
    size: pg_sys::Size,
    content: *const c_char,
) {
    if !transactional {
        return;
    }
    let prefix = cstr(prefix);
    let content = if content.is_null() {
        &[][..]
    } else {
        std::slice::from_raw_parts(content.cast::<u8>(), size)
    };
    if let Err(e) = format_of(&mut state(ctx).format).message(lsn, &prefix, content) {
        e.raise()
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    let info = txn_of(&*txn, commit_lsn);
    let slot = if (*ctx).slot.is_null() {
        String::new()
    } else {
        cstr((*(*ctx).slot).data.name.data.as_ptr())
    };
    let messages = match format_of(&mut state(ctx).format).commit(&info, &slot) {
        Ok(m) => m,
        Err(e) => e.raise(),
    };
    let count = messages.len();
    for (i, message) in messages.into_iter().enumerate() {
        pg_sys::OutputPluginPrepareWrite(ctx, i + 1 == count);
        pg_sys::appendBinaryStringInfo(
            (*ctx).out,
            message.as_ptr().cast(),
            message.len() as std::ffi::c_int,
        );
        pg_sys::OutputPluginWrite(ctx, i + 1 == count);
    }
}
