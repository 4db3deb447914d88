//! What a server's RCODE means: the one policy of every exchange pg2dns has
//! with a primary, the stream's UPDATEs ([`crate::session`]), reconcile's
//! repair UPDATEs and its transfers. Each context acts on the
//! [`RcodeClass`]; none decides by itself which RCODE is worth a retry.
//!
//! RFC 2136 §2.2 gives the answers to an UPDATE: SERVFAIL is "an internal
//! failure while processing this request, for example an operating system
//! error or a forwarding timeout", and §3.4.2.1's "the server must undo
//! all updates [...] and return SERVFAIL" means nothing of the message
//! stayed: the same message can be sent again later. REFUSED ("for policy
//! or security reasons"), FORMERR, NOTAUTH and NOTZONE may concern one
//! record rather than the whole message; the prerequisite RCODEs (§2.4.x)
//! answer a prerequisite the message carried; the rest name a server or
//! a key that cannot take UPDATEs at all.
//!
//! ```text
//!  NOERROR ───────────────────────────────▶ Accepted
//!  SERVFAIL ──────────────────────────────▶ Transient    (same message again after a backoff)
//!  NXDOMAIN YXDOMAIN YXRRSET NXRRSET ─────▶ Prerequisite (reconcile: the SOA guard failed)
//!  FORMERR REFUSED NOTAUTH NOTZONE ───────▶ Refused      (the stream narrows it down to a group)
//!  NOTIMP, 11..=4095 ─────────────────────▶ Fatal        (halt: the operator must act)
//! ```
//!
//! Which answer counts at all (a verified one, or an unsigned *error*) is
//! [`crate::tsig::judged_rcode`]'s rule; transport failures (no answer in
//! time, a lost connection) are transient in every context, as SERVFAIL.

use std::fmt;

/// A DNS RCODE (RFC 1035 §4.1.1, RFC 2136 §2.2, extended by RFC 6891).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rcode(pub u16);

impl Rcode {
    /// No error.
    pub const NOERROR: Rcode = Rcode(0);
    /// The server could not interpret the request.
    pub const FORMERR: Rcode = Rcode(1);
    /// The server failed; the update was undone (RFC 2136 §3.4.2.1).
    pub const SERVFAIL: Rcode = Rcode(2);
    /// Prerequisite: a name that should exist does not.
    pub const NXDOMAIN: Rcode = Rcode(3);
    /// The server does not implement UPDATE.
    pub const NOTIMP: Rcode = Rcode(4);
    /// The server's policy refuses the update.
    pub const REFUSED: Rcode = Rcode(5);
    /// Prerequisite: a name that should not exist does.
    pub const YXDOMAIN: Rcode = Rcode(6);
    /// Prerequisite: an RRset that should not exist does.
    pub const YXRRSET: Rcode = Rcode(7);
    /// Prerequisite: an RRset that should exist does not.
    pub const NXRRSET: Rcode = Rcode(8);
    /// The server is not authoritative for the zone (or refused the key).
    pub const NOTAUTH: Rcode = Rcode(9);
    /// A name is outside the zone.
    pub const NOTZONE: Rcode = Rcode(10);

    /// The IANA mnemonic, if this is a known RCODE.
    pub fn mnemonic(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "NOERROR",
            1 => "FORMERR",
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            4 => "NOTIMP",
            5 => "REFUSED",
            6 => "YXDOMAIN",
            7 => "YXRRSET",
            8 => "NXRRSET",
            9 => "NOTAUTH",
            10 => "NOTZONE",
            11 => "DSOTYPENI",
            16 => "BADVERS",
            _ => return None,
        })
    }

    /// What the operator should do when the server answers this.
    pub fn hint(self) -> &'static str {
        match self.0 {
            0 => "nothing",
            1 => "the server could not parse the UPDATE; report this as a pg2dns bug",
            2 => "the server failed; pg2dns retries",
            3 | 6..=8 => "a prerequisite failed; check that nothing else edits the zone",
            4 => "the server does not implement dynamic UPDATE",
            5 => "the server refuses this update: check allow-update/update-policy for this key and zone (PowerDNS: TSIG-ALLOW-DNSUPDATE, and that it holds the same secret, as it answers a bad signature with REFUSED), check-names, and whether the zone is frozen (BIND: rndc thaw) or not dynamic",
            9 => "the server is not authoritative for this zone or did not accept the key: check the zone name and primary address",
            10 => "a record is outside the zone: check the zone configuration",
            _ => "see the server's log",
        }
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mnemonic() {
            Some(name) => f.write_str(name),
            None => write!(f, "RCODE {}", self.0),
        }
    }
}

/// What an RCODE means for the message it answers (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RcodeClass {
    /// NOERROR: the server applied the message.
    Accepted,
    /// SERVFAIL: the server failed and undid the message; send it again
    /// after a backoff, on a fresh connection.
    Transient,
    /// NXDOMAIN, YXDOMAIN, YXRRSET, NXRRSET: a prerequisite the message
    /// carried failed (for reconcile's repair, the SOA guard: the zone
    /// changed since it was transferred).
    Prerequisite,
    /// FORMERR, REFUSED, NOTAUTH, NOTZONE: refused for its content or by
    /// policy, which may concern one record rather than the key or the
    /// zone; resending the same message cannot help.
    Refused,
    /// Anything else (NOTIMP, DSOTYPENI, BADVERS, BADCOOKIE, unassigned):
    /// the server cannot take this message at all; stop and tell the
    /// operator ([`Rcode::hint`]).
    Fatal,
}

impl Rcode {
    /// What this RCODE means for the message it answers.
    pub fn class(self) -> RcodeClass {
        match self {
            Rcode::NOERROR => RcodeClass::Accepted,
            Rcode::SERVFAIL => RcodeClass::Transient,
            Rcode::NXDOMAIN | Rcode::YXDOMAIN | Rcode::YXRRSET | Rcode::NXRRSET => {
                RcodeClass::Prerequisite
            }
            Rcode::FORMERR | Rcode::REFUSED | Rcode::NOTAUTH | Rcode::NOTZONE => {
                RcodeClass::Refused
            }
            _ => RcodeClass::Fatal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every RCODE 0 to 23 (the IANA registry's header and extended codes
    /// and TSIG's error codes) goes to a class on purpose.
    #[test]
    fn every_rcode_from_0_to_23_has_a_deliberate_class() {
        use RcodeClass::*;
        let expected = [
            (0, Accepted),     // NOERROR
            (1, Refused),      // FORMERR: maybe one malformed record
            (2, Transient),    // SERVFAIL: undone, send again
            (3, Prerequisite), // NXDOMAIN
            (4, Fatal),        // NOTIMP: no UPDATE at all
            (5, Refused),      // REFUSED: policy, maybe one record
            (6, Prerequisite), // YXDOMAIN
            (7, Prerequisite), // YXRRSET
            (8, Prerequisite), // NXRRSET
            (9, Refused),      // NOTAUTH: maybe one record's name
            (10, Refused),     // NOTZONE: a record outside the zone
            (11, Fatal),       // DSOTYPENI
            (12, Fatal),       // unassigned
            (13, Fatal),       // unassigned
            (14, Fatal),       // unassigned
            (15, Fatal),       // unassigned
            (16, Fatal),       // BADVERS / BADSIG
            (17, Fatal),       // BADKEY
            (18, Fatal),       // BADTIME
            (19, Fatal),       // BADMODE
            (20, Fatal),       // BADNAME
            (21, Fatal),       // BADALG
            (22, Fatal),       // BADTRUNC
            (23, Fatal),       // BADCOOKIE: pg2dns sends no cookie
        ];
        for (code, class) in expected {
            assert_eq!(Rcode(code).class(), class, "RCODE {code} ({})", Rcode(code));
        }
        assert_eq!(Rcode(4095).class(), Fatal);
    }

    #[test]
    fn only_servfail_is_worth_sending_again() {
        let transient: Vec<u16> = (0..=4095)
            .filter(|&c| Rcode(c).class() == RcodeClass::Transient)
            .collect();
        assert_eq!(transient, [2]);
    }

    #[test]
    fn an_unknown_rcode_prints_its_number_and_asks_for_the_log() {
        assert_eq!(Rcode(23).to_string(), "RCODE 23");
        assert_eq!(Rcode(23).hint(), "see the server's log");
        assert_eq!(Rcode::SERVFAIL.to_string(), "SERVFAIL");
    }
}
