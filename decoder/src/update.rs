//! RFC 2136 UPDATE planning, packing and encoding (being written).

use crate::records::Record;

/// One operation of an UPDATE's update section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateOp {
    /// Delete exactly this RR (RFC 2136 §2.5.4: class NONE, TTL 0).
    Delete(Record),
    /// Add this RR (RFC 2136 §2.5.1: class IN).
    Add(Record),
}
