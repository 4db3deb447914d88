//! The harness checked on its own, without pg2dns: if these fail, the
//! scenario tests cannot be trusted either.

use anyhow::{ensure, Result};

use crate::harness::stack::{FORWARD, REVERSE};
use crate::harness::{Bind, Postgres, Record, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_applies_a_signed_nsupdate_and_shows_it_in_the_axfr() -> Result<()> {
    let dir = TempDir::new("selftest-bind")?;
    let bind = Bind::start(dir.path(), &[FORWARD, REVERSE]).await?;
    ensure!(
        bind.axfr(FORWARD).await?.is_empty(),
        "a new zone holds only SOA and NS"
    );

    bind.nsupdate(
        "update add www.example.test. 300 A 192.0.2.10\n\
         update add Mixed.Example.Test. 300 CNAME WWW.example.test.\n\
         update add v6.example.test. 300 AAAA 2001:db8:0:0::1\n\
         update add t.example.test. 300 TXT \"hello world\" \"x\\\"y\"",
    )
    .await?;
    let expected = vec![
        Record::new("mixed.example.test", 300, "CNAME", "www.example.test"),
        Record::new("t.example.test", 300, "TXT", r#""hello world" "x\"y""#),
        Record::new("v6.example.test", 300, "AAAA", "2001:db8::1"),
        Record::new("www.example.test", 300, "A", "192.0.2.10"),
    ];
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    ensure!(
        bind.axfr(FORWARD).await? == expected_sorted,
        "AXFR after nsupdate: {:?}",
        bind.axfr(FORWARD).await?
    );
    ensure!(
        bind.query("www.example.test", "A").await? == vec![expected[3].clone()],
        "a plain query sees the new record"
    );
    ensure!(
        bind.axfr(REVERSE).await?.is_empty(),
        "the other zone is untouched"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_keeps_dynamic_records_across_a_restart_on_the_same_port() -> Result<()> {
    let dir = TempDir::new("selftest-bind-restart")?;
    let mut bind = Bind::start(dir.path(), &[FORWARD, REVERSE]).await?;
    bind.nsupdate("update add 10.2.0.192.in-addr.arpa. 300 PTR www.example.test.")
        .await?;
    let before = bind.axfr(REVERSE).await?;
    ensure!(before.len() == 1, "the PTR arrived: {before:?}");
    bind.stop().await?;
    ensure!(
        bind.axfr(REVERSE).await.is_err(),
        "a stopped server answers no AXFR"
    );
    bind.start_again().await?;
    ensure!(
        bind.axfr(REVERSE).await? == before,
        "the journal kept the PTR"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_accepts_a_logical_slot_and_survives_a_restart() -> Result<()> {
    let dir = TempDir::new("selftest-pg")?;
    let pg = Postgres::start(dir.path()).await?;
    let db = pg.connect().await?;
    let level: String = db.query_one("SHOW wal_level", &[]).await?.get(0);
    ensure!(level == "logical", "wal_level is {level}");
    db.batch_execute("SELECT pg_create_logical_replication_slot('selftest', 'pgoutput')")
        .await?;
    pg.restart().await?;
    ensure!(
        db.query_one("SELECT 1", &[]).await.is_err(),
        "the restart cut old connections"
    );
    let db = pg.connect().await?;
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'selftest'",
            &[],
        )
        .await?
        .get(0);
    ensure!(slots == 1, "the slot survived the restart");
    Ok(())
}
