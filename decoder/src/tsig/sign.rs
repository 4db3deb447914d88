//! Signing a request (RFC 8945 §5.1).

use super::wire::{wire_name, Variables, CLASS_ANY, MAX_MESSAGE, MAX_TIME};
use super::{TsigError, TsigKey};

/// A request with its TSIG record, and what verifying the answer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    /// The message to send: the request, its ARCOUNT one higher, the TSIG
    /// record last.
    pub wire: Vec<u8>,
    /// The request's MAC; the answer's MAC covers it.
    pub mac: Vec<u8>,
    /// The message ID (also the TSIG Original ID).
    pub id: u16,
    /// Time Signed, seconds since the Unix epoch.
    pub time_signed: u64,
}

/// Signs `message` (a complete DNS message without TSIG) with `key` at time
/// `now`: appends the TSIG record and increments ARCOUNT. The Original ID is
/// the message's ID.
pub fn sign(
    message: &[u8],
    key: &TsigKey,
    now: u64,
    fudge: u16,
) -> Result<SignedRequest, TsigError> {
    if message.len() < 12 {
        return Err(TsigError::Malformed {
            offset: message.len(),
            reason: "message shorter than a DNS header",
        });
    }
    if now > MAX_TIME {
        return Err(TsigError::TimeOutOfRange { now });
    }
    let id = u16::from_be_bytes([message[0], message[1]]);
    let arcount = u16::from_be_bytes([message[10], message[11]]);
    let arcount = arcount.checked_add(1).ok_or(TsigError::Malformed {
        offset: 10,
        reason: "ARCOUNT is already 65535",
    })?;
    let key_wire = wire_name(&key.name);
    let alg_wire = key.algorithm.wire_name();
    let variables = Variables {
        key: &key_wire,
        class: CLASS_ANY,
        ttl: 0,
        algorithm: &alg_wire,
        time_signed: now,
        fudge,
        error: 0,
        other: &[],
    };

    let mut digest = Vec::with_capacity(message.len() + 64);
    digest.extend_from_slice(message);
    variables.push_to(&mut digest);
    let mac = key.mac(&digest);

    let mut wire = digest;
    wire.truncate(message.len());
    wire[10..12].copy_from_slice(&arcount.to_be_bytes());
    variables.push_record(&mut wire, &mac, id);
    if wire.len() > MAX_MESSAGE {
        return Err(TsigError::TooLarge { len: wire.len() });
    }
    Ok(SignedRequest {
        wire,
        mac,
        id,
        time_signed: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsig::fixtures::{update_message, NOW};
    use crate::tsig::{Algorithm, DEFAULT_FUDGE};
    use proptest::prelude::*;

    #[test]
    fn signing_needs_a_header_and_a_48_bit_time() {
        let key = TsigKey::new("k", Algorithm::HmacSha256, vec![1; 32]).unwrap();
        assert!(matches!(
            sign(&[0; 11], &key, NOW, 300),
            Err(TsigError::Malformed { offset: 11, .. })
        ));
        assert_eq!(
            sign(&update_message(), &key, 1 << 48, 300),
            Err(TsigError::TimeOutOfRange { now: 1 << 48 })
        );
        let mut full = update_message();
        full[10] = 0xFF;
        full[11] = 0xFF;
        assert!(matches!(
            sign(&full, &key, NOW, 300),
            Err(TsigError::Malformed { offset: 10, .. })
        ));
    }

    proptest! {
        #[test]
        fn sign_never_panics_and_adds_exactly_record_len(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let key = TsigKey::new("k", Algorithm::HmacSha1, vec![1; 20]).unwrap();
            if let Ok(signed) = sign(&bytes, &key, NOW, DEFAULT_FUDGE) {
                prop_assert_eq!(signed.wire.len(), bytes.len() + key.record_len());
            }
        }
    }
}
