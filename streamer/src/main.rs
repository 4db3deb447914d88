//! The `pg2dns` command: parses arguments, sets up logging, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use pg2dns::{admin, pipeline, reconcile, setup, Config};
use tracing_subscriber::EnvFilter;

/// `pg2dns --version`: the package version and the git revision it was
/// built from (streamer/build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PG2DNS_GIT_REVISION"),
    ")"
);

/// Streams PostgreSQL changes into DNS as TSIG-signed RFC 2136 UPDATEs.
#[derive(Parser)]
#[command(name = "pg2dns", version = VERSION, about)]
struct Cli {
    /// The log format on stderr: `text` for people (coloured only on a
    /// terminal without NO_COLOR), `json` (one object a line) for log
    /// shippers.
    #[arg(
        long,
        global = true,
        env = "PG2DNS_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    /// The configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "PG2DNS_CONFIG",
        default_value = "pg2dns.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the pg2dns schema, create the publication and the replication
    /// slot, and load the tables into DNS at the slot's consistent point
    /// (idempotent). Exit 0 done, 1 refused or failed (nothing changed), 2 set
    /// up but a zone's first load did not complete (the output says how to
    /// finish).
    Setup {
        /// Accept that the slot starts after pg2dns's progress (it was
        /// dropped and re-created): stream from the slot, once the zones were
        /// resynchronised from the database.
        #[arg(long)]
        accept_gap: bool,
        /// Print what setup would do and the first load's plan per zone
        /// (records added and deleted), changing nothing. Exit 0, or 2 when
        /// setup would refuse.
        #[arg(long)]
        dry_run: bool,
        /// Let the first load delete records that no row holds and pg2dns
        /// never published (made by hand or by another tool).
        #[arg(long)]
        force: bool,
        /// Replace a lost replication slot (wal_status = lost, or dropped)
        /// with a new one, and bring every zone in line with the tables at
        /// its consistent point.
        #[arg(long, conflicts_with = "accept_gap")]
        recreate_slot: bool,
        /// Also install the pg2dns_plugin extension's record checks (it
        /// must be installed in the server; docs/plugin.md): a row of
        /// pg2dns.rr or of a [[source]] table that the stream would refuse
        /// fails the writer's INSERT or UPDATE with the reason.
        #[arg(long, conflicts_with = "dry_run")]
        with_plugin: bool,
    },
    /// Stream changes to the DNS servers until stopped (SIGINT/SIGTERM).
    Run {
        /// Exit with the error on a halt (bad key, TRUNCATE, slot gap…)
        /// instead of staying up, halted, until `pg2dns resume`.
        #[arg(long)]
        exit_on_halt: bool,
    },
    /// Pause the service right after the current transaction: every
    /// transaction committed before the pause is in DNS, none after.
    Pause {
        /// Why (shown by `pg2dns status`).
        #[arg(long, default_value = "")]
        reason: String,
        /// Return only once the service has stopped, and print where.
        #[arg(long)]
        wait: bool,
    },
    /// Let a paused or halted service go on.
    Resume {
        /// Release the transaction the mass-delete guard holds (that one
        /// only): its deletes are applied. With an LSN, release the
        /// transaction committed there instead.
        #[arg(long, value_name = "LSN", num_args = 0..=1, default_missing_value = "")]
        allow_mass_delete: Option<String>,
    },
    /// Show what the service is doing and how far behind it is.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration file and the key files it names, then that
    /// every source table and column exists in the database with a usable
    /// type and that the replica identity carries the key; print what each
    /// source publishes. Exit 1 on any problem.
    CheckConfig {
        /// Check only the file and the key files, without connecting.
        #[arg(long)]
        offline: bool,
        /// Ask every zone's primary about the key and the update and
        /// transfer rights, not a sample of 256 per server when a server
        /// has more than 1,000 zones (each zone is asked for its SOA
        /// either way).
        #[arg(long)]
        every_zone: bool,
    },
    /// Compare pg2dns.rr with each zone's records (AXFR) and, with --apply,
    /// repair the zones. Exit 0 in sync, 1 differences, 2 error. A running
    /// service is paused for the comparison and resumed by it: no need to
    /// stop `pg2dns run`.
    Reconcile {
        /// Only this zone (repeatable; default: every configured zone).
        #[arg(long = "zone")]
        zones: Vec<String>,
        /// Send the repair UPDATEs and bring the row state in line.
        #[arg(long)]
        apply: bool,
        /// Apply even a repair that deletes or changes more than
        /// reconcile.max_change_share of a zone.
        #[arg(long)]
        force: bool,
        /// Repair without the SOA prerequisite (servers that check it
        /// against another SOA than they serve, e.g. BIND inline-signing);
        /// only while nothing else updates the zone.
        #[arg(long, requires = "apply")]
        unguarded: bool,
        /// Print the full report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// ZONE=PATH: also compare the legacy generator's master file of
        /// ZONE with the database and DNS (repeatable; read-only, so not
        /// with --apply).
        #[arg(long = "zone-file", value_name = "ZONE=PATH", conflicts_with = "apply")]
        zone_files: Vec<String>,
        /// Only this primary (a [[server]] name) of zones with several
        /// primaries; default: each primary of each zone.
        #[arg(long, value_name = "NAME")]
        primary: Option<String>,
    },
    /// Print a shell completion script on stdout.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    #[command(hide = true)]
    Man,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Logs on stderr. Colour only when stderr is a terminal and NO_COLOR is
/// unset (or empty): under systemd or in a file, ANSI codes are noise.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init()
        }
    }
}

/// The `pg2dns completions` and `pg2dns man` output, rendered whole and
/// then written as the other commands' output is: a reader that went away
/// (`pg2dns man | head`) ends it quietly (clap_complete panicked on the
/// closed pipe, the man page said "error: Broken pipe").
fn generate(command: &Command) -> std::io::Result<()> {
    use std::io::Write;
    let mut cli = Cli::command();
    let mut text = Vec::new();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "pg2dns", &mut text)
        }
        _ => clap_mangen::Man::new(cli).render(&mut text)?,
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(&text).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Completions { .. } | Command::Man) {
        return match generate(&cli.command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pg2dns: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(cli.log_format);
    // reconcile exits 1 for "differences", so its errors exit 2.
    let error_code = if matches!(cli.command, Command::Reconcile { .. }) {
        2
    } else {
        1
    };
    // The stream is a chain of hand-offs (replication reader, pipeline,
    // SQL connection, one task per zone) with little work at each: on one
    // thread they cost no cross-thread wake-ups, which were most of its CPU
    // for a live transaction; PostgreSQL and the DNS server keep the other
    // cores. Reconcile and setup (its first load) run on one thread too:
    // with a thread per core glibc gives each its own malloc arena, and
    // memory the planner freed on one was not reused by the transfer on
    // the other (a 200,000-record report peaked at 98 or at 274 MiB, by
    // where its task ran). The other commands keep a thread per core.
    let operator = matches!(
        cli.command,
        Command::Pause { .. } | Command::Resume { .. } | Command::Status { .. }
    );
    let one_thread = matches!(
        cli.command,
        Command::Run { .. } | Command::Reconcile { .. } | Command::Setup { .. }
    );
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pg2dns: cannot start the runtime: {e}");
            return ExitCode::from(error_code);
        }
    };
    // The command runs as a spawned task, not as `block_on`'s own future:
    // waking that future from another task writes the runtime's eventfd
    // and costs an extra `epoll_wait`, where waking a task on its own
    // thread is a push onto the run queue. Every hand-off of the stream
    // (replication reader → pipeline, zone sink → pipeline) is such a wake.
    let task = runtime.spawn(async move {
        real_main(cli).await.map_err(|e| {
            let mut message = pg2dns::error::chain(e.as_ref());
            if let Some(hint) = privilege_hint(e.as_ref(), operator) {
                message.push_str(hint);
            }
            message
        })
    });
    // A panic of the task (its message already printed) ends here too.
    match runtime
        .block_on(task)
        .unwrap_or_else(|e| Err(e.to_string()))
    {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pg2dns: error: {e}");
            ExitCode::from(error_code)
        }
    }
}

async fn real_main(cli: Cli) -> Result<u8, Box<dyn std::error::Error>> {
    // The operator's commands need only an SQL login: they read `[database]`
    // alone, so they work without the service's TSIG key files.
    let config = match &cli.command {
        Command::Pause { .. } | Command::Resume { .. } | Command::Status { .. } => {
            let database = pg2dns::config::DatabaseConfig::load(&cli.config)?;
            return operator_command(cli.command, &database).await;
        }
        _ => Config::load(&cli.config)?,
    };
    match cli.command {
        Command::CheckConfig {
            offline,
            every_zone,
        } => {
            {
                // One write for thousands of zones, not one per line; a
                // reader that went away (`check-config | head`) ends the
                // output, not the checks (their exit code still counts).
                use std::fmt::Write as _;
                let mut out = format!(
                    "{}: ok ({} zone(s), slot {}, publication {})\n",
                    config.path.display(),
                    config.zones.len(),
                    config.database.slot,
                    config.database.publication
                );
                for z in &config.zones {
                    let primary = match z.primary_addr.to_string() {
                        written if written == z.primary.to_string() => written,
                        written => format!("{written} ({})", z.primary),
                    };
                    writeln!(
                        out,
                        "  zone {} → {primary} with key {} ({})",
                        z.name, z.key.name, z.key.algorithm
                    )?;
                    for p in &z.more_primaries {
                        writeln!(
                            out,
                            "    and → {} {} with key {} ({}), policy {}",
                            p.name, p.primary, p.key.name, p.key.algorithm, z.policy
                        )?;
                    }
                }
                let zones = config.zones();
                writeln!(out, "  source pg2dns.rr (built in): one record per row")?;
                for source in &config.sources {
                    writeln!(out, "  source {}", source.describe(&zones))?;
                }
                print_quietly(&out);
            }
            if offline {
                return Ok(0);
            }
            let mut problems = pg2dns::check::check_database(&config).await?;
            // The zones of pg2dns.zones are checked as the configuration's.
            let (with_table, table_problems) = pg2dns::check::with_table_zones(&config).await?;
            problems.extend(table_problems);
            let dns = pg2dns::check::check_servers(&with_table, every_zone).await;
            problems.extend(dns.problems);
            let mut out = String::new();
            for (server, zones, signed) in &dns.sampled {
                out.push_str(&format!(
                    "dns: {zones} zones on {server}: each asked for its SOA; the key and the update and transfer rights asked of {signed} of them (--every-zone asks each)\n"
                ));
            }
            if problems.is_empty() {
                out.push_str(
                    "database: every source table and column is there, and each key is unique and in its table's replica identity\n\
                     dns: each zone's primary knows its key, serves the zone, and lets the key update and transfer it\n",
                );
                print_quietly(&out);
                return Ok(0);
            }
            for p in &problems {
                out.push_str(&format!("problem: {p}\n"));
            }
            print_quietly(&out);
            Ok(1)
        }
        Command::Setup {
            accept_gap,
            dry_run,
            force,
            recreate_slot,
            with_plugin,
        } => {
            let options = setup::SetupOptions {
                accept_gap,
                force,
                recreate_slot,
            };
            if dry_run {
                let dry = setup::dry_run(&config, &options).await?;
                print_quietly(&dry.human(&config.database.slot));
                return Ok(dry.exit_code());
            }
            let report = match setup::setup(&config, &options).await {
                Err(setup::SetupError::LoadRefused { why, preview }) => {
                    print_quietly(&preview.human());
                    eprintln!("pg2dns: setup refused: {why}; nothing was changed (`pg2dns setup --dry-run` shows the plan)");
                    return Ok(1);
                }
                r => r?,
            };
            print_quietly(&setup_summary(&report, &config));
            if with_plugin {
                let installed = pg2dns::plugin_checks::install(&config).await?;
                print_quietly(&format!(
                    "record checks: pg2dns_plugin {} ({}), trigger rr_check on pg2dns.rr\n",
                    installed.version,
                    if installed.extension_created {
                        "created now"
                    } else {
                        "was there"
                    }
                ));
                for table in &installed.sources {
                    print_quietly(&format!(
                        "record checks: trigger pg2dns_source_check on {table}\n"
                    ));
                }
                for (table, why) in &installed.skipped {
                    print_quietly(&format!("record checks: none on {table}: {why}\n"));
                }
            }
            Ok(report.exit_code())
        }
        command @ (Command::Pause { .. } | Command::Resume { .. } | Command::Status { .. }) => {
            operator_command(command, &config.database).await
        }
        Command::Run { exit_on_halt } => {
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                pg2dns::notify::stopping();
                let _ = tx.send(true);
            });
            pg2dns::metrics::get().set_per_zone(config.metrics_per_zone);
            if let Some(addr) = config.metrics_listen {
                tokio::spawn(pg2dns::metrics::serve(addr));
            }
            let (reload_tx, reload_rx) = tokio::sync::watch::channel(0u64);
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    return;
                };
                let mut count = 0u64;
                while hup.recv().await.is_some() {
                    count += 1;
                    pg2dns::notify::reloading();
                    let _ = reload_tx.send(count);
                }
            });
            let options = pipeline::RunOptions {
                exit_on_halt,
                config_path: Some(cli.config.clone()),
                reload: Some(reload_rx),
            };
            pipeline::run(config, rx, options).await?;
            Ok(0)
        }
        Command::Completions { .. } | Command::Man => {
            generate(&cli.command)?;
            Ok(0)
        }
        Command::Reconcile {
            zones,
            apply,
            force,
            unguarded,
            json,
            zone_files,
            primary,
        } => {
            let zone_files = zone_files
                .iter()
                .map(|arg| match arg.split_once('=') {
                    Some((zone, path)) if !zone.is_empty() && !path.is_empty() => {
                        Ok((zone.to_owned(), std::path::PathBuf::from(path)))
                    }
                    _ => Err(reconcile::ReconcileError::ZoneFileArg(format!(
                        "{arg}: write ZONE=PATH, e.g. example.test.=/var/lib/legacy/db.example.test"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            // A signal ends it after resuming a service it paused.
            let (tx, rx) = tokio::sync::watch::channel(None);
            tokio::spawn(async move {
                let _ = tx.send(Some(reconcile_signal().await));
            });
            let options = reconcile::Options {
                zones,
                apply,
                force,
                unguarded,
                // On stderr, and only when it is a terminal (indicatif
                // hides the bar otherwise).
                progress: !json,
                protect_unowned: false,
                interrupt: Some(rx),
                zone_files,
                primary,
                ..Default::default()
            };
            let report = match reconcile::reconcile(&config, &options).await {
                Err(reconcile::ReconcileError::Interrupted(signal)) => {
                    eprintln!("pg2dns: reconcile interrupted by {signal}; nothing more was sent");
                    return Ok(signal.exit_code());
                }
                r => r?,
            };
            if json {
                print_quietly(&format!("{}\n", report.json()));
            } else {
                print_quietly(&report.human());
            }
            Ok(report.exit_code())
        }
    }
}

/// Writes to stdout (colour stripped when it is not a terminal or NO_COLOR is
/// set); a closed stdout (`| head`) ends the output quietly, never a panic.
fn print_quietly(text: &str) {
    use std::io::Write;
    let mut out = anstream::stdout();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// What `pg2dns setup` did, for people.
fn setup_summary(report: &setup::SetupReport, config: &Config) -> String {
    let mut out = String::new();
    if let Some(old) = report.slot_recreated {
        out.push_str(&format!("slot {} replaced: the lost slot (confirmed up to {old}) was dropped and a new one created\n", config.database.slot));
    }
    if let Some(rows) = report.loaded {
        out.push_str(&format!("first load: the {rows} rows the database holds at the new slot's consistent point are in DNS\n"));
    }
    if let Some(load) = &report.load {
        out.push_str(&load.human());
    }
    if let Some(problem) = &report.load_problem {
        out.push_str(&format!(
            "error: the first load did not complete:\n{problem}\n"
        ));
    }
    if report.resumed {
        out.push_str("the halted service was asked to resume from the new slot\n");
    }
    if let Some((progress, slot_at)) = report.gap {
        if report.gap_accepted {
            out.push_str(&format!("gap accepted: streaming continues from {slot_at} (pg2dns had applied changes up to {progress})\n"));
        } else {
            out.push_str(&format!("warning: slot {} starts at {slot_at} but pg2dns applied changes only up to {progress}: the changes in between were never streamed. Run `pg2dns setup --recreate-slot` to load every zone at a new slot's point (or resynchronise the zones yourself, then `pg2dns setup --accept-gap`); until then `pg2dns run` halts\n", config.database.slot));
        }
    }
    out.push_str(&format!(
        "setup done: schema versions applied {:?}, publication {}, slot {}\n",
        report.applied,
        if report.publication_created {
            "created"
        } else {
            "already there"
        },
        if report.slot_created {
            "created"
        } else {
            "already there"
        },
    ));
    for table in &report.sources_added {
        out.push_str(&format!("source table {table} added to the publication\n"));
    }
    if !report.truncate_triggers_missing.is_empty() {
        out.push_str("this role does not own these partitions, so a TRUNCATE of one of them alone would not reach pg2dns; their owner runs:\n");
        for statement in &report.truncate_triggers_missing {
            out.push_str(&format!("  {statement}\n"));
        }
    }
    out
}

/// What to do when PostgreSQL refused a privilege (SQLSTATE 42501): which
/// role the command runs as. The operator role runs `pause`, `resume` and
/// `status`; every other command reads the tables as the service does.
fn privilege_hint(e: &(dyn std::error::Error + 'static), operator: bool) -> Option<&'static str> {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            if pg.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                return Some(if operator {
                    "; this role lacks the operator's grants: list it in [roles] operators and run `pg2dns setup` again as the service (docs/setup.md, roles and grants)"
                } else {
                    "; this command reads pg2dns's tables as the service does: run it with the service's configuration and role (docs/setup.md, roles and grants); an operator role runs pause, resume and status"
                });
            }
        }
        cause = err.source();
    }
    None
}

/// `pause`, `resume` and `status`: SQL on `database`, nothing else.
async fn operator_command(
    command: Command,
    database: &pg2dns::config::DatabaseConfig,
) -> Result<u8, Box<dyn std::error::Error>> {
    match command {
        Command::Pause { reason, wait } => admin::pause(database, &reason, wait).await?,
        Command::Resume {
            allow_mass_delete: Some(lsn),
        } => admin::allow_mass_delete(database, &lsn).await?,
        Command::Resume {
            allow_mass_delete: None,
        } => admin::resume(database).await?,
        Command::Status { json } => admin::status(database, json).await?,
        _ => return Err("not an operator's command".into()),
    }
    Ok(0)
}

/// The first SIGINT or SIGTERM.
async fn reconcile_signal() -> reconcile::Signal {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => reconcile::Signal::Interrupt,
        _ = term.recv() => reconcile::Signal::Terminate,
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
