//! `format 'protobuf'`: length-delimited protobuf messages for `pg2dns run`
//! (issue #22). Not built yet: this stub only names the format so that the
//! framework ([`super`]) can refuse it with a clear error.

use super::{DecodingError, Format, Options};

/// The protobuf format, once built.
pub fn build(_options: &Options) -> Result<Box<dyn Format>, DecodingError> {
    Err(DecodingError::unsupported(
        "format protobuf is not built yet".into(),
        "use -o format=nsupdate, or pgoutput for pg2dns run".into(),
    ))
}
