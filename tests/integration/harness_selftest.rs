//! The harness checked on its own, without pg2dns: if these fail, the
//! scenario tests cannot be trusted either.

use anyhow::{ensure, Result};

use crate::harness::stack::{FORWARD, REVERSE};
use crate::harness::{Postgres, Primary, Record, Server, TempDir};

on_each_primary!(
    the_server_applies_a_signed_nsupdate_and_shows_it_in_the_axfr,
    the_server_keeps_dynamic_records_across_a_restart_on_the_same_port,
);

async fn the_server_applies_a_signed_nsupdate_and_shows_it_in_the_axfr(
    primary: Primary,
) -> Result<()> {
    let dir = TempDir::new(&format!("selftest-nsupdate-{}", primary.label()))?;
    let server = Server::start(primary, dir.path(), &[FORWARD, REVERSE]).await?;
    ensure!(
        server.zones() == [FORWARD, REVERSE],
        "zones: {:?}",
        server.zones()
    );
    ensure!(
        server.axfr(FORWARD).await?.is_empty(),
        "a new zone holds only SOA and NS"
    );

    server
        .nsupdate(
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
    let axfr = server.axfr(FORWARD).await?;
    ensure!(
        axfr == expected,
        "AXFR after nsupdate: {axfr:?}\n{}",
        server.log_tail(20)
    );
    ensure!(
        server.query("www.example.test", "A").await? == vec![expected[3].clone()],
        "a plain query sees the new record"
    );
    ensure!(
        server.axfr(REVERSE).await?.is_empty(),
        "the other zone is untouched"
    );
    Ok(())
}

async fn the_server_keeps_dynamic_records_across_a_restart_on_the_same_port(
    primary: Primary,
) -> Result<()> {
    let dir = TempDir::new(&format!("selftest-restart-{}", primary.label()))?;
    let mut server = Server::start(primary, dir.path(), &[FORWARD, REVERSE]).await?;
    server
        .nsupdate(
            "update add 10.2.0.192.in-addr.arpa. 300 PTR www.example.test.\n\
             update add 11.2.0.192.in-addr.arpa. 300 TXT \"hello world\"",
        )
        .await?;
    let before = server.axfr(REVERSE).await?;
    ensure!(
        before
            == vec![
                Record::new("10.2.0.192.in-addr.arpa", 300, "PTR", "www.example.test"),
                Record::new("11.2.0.192.in-addr.arpa", 300, "TXT", "\"hello world\""),
            ],
        "the update arrived: {before:?}"
    );
    server.stop().await?;
    ensure!(
        server.axfr(REVERSE).await.is_err(),
        "a stopped server answers no AXFR"
    );
    server.start_again().await?;
    let after = server.axfr(REVERSE).await?;
    ensure!(
        after == before,
        "the journal kept the update: {after:?}\n{}",
        server.log_tail(20)
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
