//! A row of `pg2dns.control` this slot cannot read, recorded as a
//! rejection: in the store's open transaction, so that it is committed with
//! the checkpoint that covers its transaction (a crash before that replays
//! the transaction and records it again, once).

use pg2dns_decoder::stream::ControlRowError;

use super::{Store, StoreError};

impl Store {
    /// Records in `pg2dns.rejected` that the control row `error` names was
    /// not followed, with why.
    pub async fn reject_control_row(&mut self, error: &ControlRowError) -> Result<(), StoreError> {
        let slot = self.slot.clone();
        let row = error.row().to_owned();
        let lsn = error.lsn().to_string();
        let reason = error.to_string();
        self.txn_execute(
            "INSERT INTO pg2dns.rejected (slot, source, row_key, lsn, reason) \
             VALUES ($1, 'pg2dns.control', $2, $3::text::pg_lsn, $4)",
            &[&slot, &row, &lsn, &reason],
            "cannot record a control row not followed in pg2dns.rejected",
        )
        .await?;
        Ok(())
    }
}
