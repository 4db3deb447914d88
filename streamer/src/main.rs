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
    /// Install the pg2dns schema, create the publication and the replication slot (idempotent).
    Setup {
        /// Accept that the slot starts after pg2dns's progress (it was
        /// dropped and re-created): stream from the slot, once the zones were
        /// resynchronised from the database.
        #[arg(long)]
        accept_gap: bool,
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
    },
    /// Compare pg2dns.rr with each zone's records (AXFR) and, with --apply,
    /// repair the zones. Exit 0 in sync, 1 differences, 2 error. Stop
    /// `pg2dns run` first for an exact comparison.
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

/// The `pg2dns completions` and `pg2dns man` output.
fn generate(command: &Command) -> std::io::Result<()> {
    let mut cli = Cli::command();
    let mut out = std::io::stdout();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "pg2dns", &mut out);
            Ok(())
        }
        _ => clap_mangen::Man::new(cli).render(&mut out),
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
    // cores. The batch commands (reconcile's transfers and diffs) keep a
    // thread per core.
    let mut builder = if matches!(cli.command, Command::Run { .. }) {
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
        real_main(cli)
            .await
            .map_err(|e| pg2dns::error::chain(e.as_ref()))
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
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::CheckConfig { offline } => {
            println!(
                "{}: ok ({} zone(s), slot {}, publication {})",
                config.path.display(),
                config.zones.len(),
                config.database.slot,
                config.database.publication
            );
            for z in &config.zones {
                println!(
                    "  zone {} → {} with key {} ({})",
                    z.name, z.primary, z.key.name, z.key.algorithm
                );
            }
            let zones = config.zones();
            println!("  source pg2dns.rr (built in): one record per row");
            for source in &config.sources {
                println!("  source {}", source.describe(&zones));
            }
            if offline {
                return Ok(0);
            }
            let problems = pg2dns::check::check_database(&config).await?;
            if problems.is_empty() {
                println!(
                    "database: every source table and column is there, and each key is in its table's replica identity"
                );
                return Ok(0);
            }
            for p in &problems {
                println!("problem: {p}");
            }
            Ok(1)
        }
        Command::Setup { accept_gap } => {
            let report = setup::setup(&config, accept_gap).await?;
            if let Some(rows) = report.loaded {
                println!("first load: the {rows} rows the database holds at the new slot's consistent point are in DNS");
            }
            if let Some(problem) = &report.load_problem {
                // The problem is reconcile's coloured summary: anstream
                // strips the colour when stdout is not a terminal or
                // NO_COLOR is set.
                use std::io::Write;
                writeln!(
                    anstream::stdout(),
                    "warning: the first load did not complete: {problem}"
                )?;
            }
            if let Some((progress, slot_at)) = report.gap {
                if report.gap_accepted {
                    println!("gap accepted: streaming continues from {slot_at} (pg2dns had applied changes up to {progress})");
                } else {
                    println!("warning: slot {} starts at {slot_at} but pg2dns applied changes only up to {progress}: the changes in between were never streamed. Resynchronise the zones from the database, then run `pg2dns setup --accept-gap`; until then `pg2dns run` halts", config.database.slot);
                }
            }
            println!(
                "setup done: schema versions applied {:?}, publication {}, slot {}",
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
            );
            for table in &report.sources_added {
                println!("source table {table} added to the publication");
            }
            Ok(0)
        }
        Command::Pause { reason, wait } => {
            admin::pause(&config, &reason, wait).await?;
            Ok(0)
        }
        Command::Resume { allow_mass_delete } => {
            match allow_mass_delete {
                Some(lsn) => admin::allow_mass_delete(&config, &lsn).await?,
                None => admin::resume(&config).await?,
            }
            Ok(0)
        }
        Command::Status { json } => {
            admin::status(&config, json).await?;
            Ok(0)
        }
        Command::Run { exit_on_halt } => {
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                pg2dns::notify::stopping();
                let _ = tx.send(true);
            });
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
        } => {
            let options = reconcile::Options {
                zones,
                apply,
                force,
                unguarded,
                // On stderr, and only when it is a terminal (indicatif
                // hides the bar otherwise).
                progress: !json,
            };
            let report = reconcile::reconcile(&config, &options).await?;
            if json {
                println!("{}", report.json());
            } else {
                // anstream strips the colour when stdout is not a terminal
                // or NO_COLOR is set.
                use std::io::Write;
                let mut out = anstream::stdout();
                write!(out, "{}", report.human())?;
            }
            Ok(report.exit_code())
        }
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
