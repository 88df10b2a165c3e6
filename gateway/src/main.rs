//! The `gateway` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gateway::config::Config;
use gateway::dial::{DialOptions, dial};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "WebRTC-to-SIP trunking gateway with WebAssembly call plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config: demo mode, with a built-in echo/tone trunk.
    Run {
        /// The TOML configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; prints every mistake as FILE:LINE:COLUMN: FIELD: PROBLEM.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Place one real call through a trunk, play a tone, and report SIP and RTP results.
    Dial {
        /// The TOML configuration with the trunk.
        #[arg(long)]
        config: PathBuf,
        /// Trunk name (its failover trunks follow).
        #[arg(long)]
        trunk: String,
        /// Number to call.
        #[arg(long)]
        to: String,
        /// Caller ID user part (default: the trunk's from_user).
        #[arg(long)]
        from: Option<String>,
        /// Seconds to stay connected.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Probe tone in Hz (1004 Hz, the telephony test tone: not a divisor of 8 kHz, so G.711 quantisation noise spreads instead of hiding under the tone).
        #[arg(long, default_value_t = 1004.0)]
        tone: f64,
        /// DTMF digits to send once connected (RFC 4733).
        #[arg(long)]
        dtmf: Option<String>,
        /// Cancel the call if not answered within this many seconds.
        #[arg(long, default_value_t = 30.0)]
        answer_timeout: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Logs to stderr: plain text (colours only on a terminal, so files and journals get no
/// escape codes), or JSON lines with `GATEWAY_LOG_FORMAT=json` for log pipelines.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| "warn,rtc_dtls=error".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("GATEWAY_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> ExitCode {
    init_logging();
    gateway::fault::log_panics();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config: path } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(async {
                let config = match path {
                    Some(path) => match Config::load(&path) {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("{e}");
                            return ExitCode::from(2);
                        }
                    },
                    None => match gateway::demo::start().await {
                        Ok(trunk) => {
                            eprintln!("demo mode: built-in trunk on {trunk}; targets `echo` and `tone`, no token needed");
                            Config::demo(trunk)
                        }
                        Err(e) => {
                            eprintln!("cannot start the demo trunk: {e}");
                            return ExitCode::from(2);
                        }
                    },
                };
                let gateway = match gateway::run::start(&config).await {
                    Ok(g) => g,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(2);
                    }
                };
                let http = gateway.http_addr;
                let host = if http.ip().is_unspecified() { "localhost".to_string() } else { http.ip().to_string() };
                eprintln!("gateway running: signaling ws://{host}:{}/ws, health http://{host}:{}/healthz, metrics /metrics", http.port(), http.port());
                eprintln!(
                    "  WebRTC media on udp {}; SIP on udp {}{}; {} trunks",
                    gateway.calls.mux.local_addr(),
                    gateway.endpoint.udp_addr(),
                    gateway.endpoint.tcp_addr().map(|a| format!(", tcp {a}")).unwrap_or_default(),
                    config.trunks.len()
                );
                #[cfg(unix)]
                if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                    // SIGHUP: reload the plugins from the configuration file.
                    let calls = gateway.calls.clone();
                    tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            match calls.plugins.reload_file(calls.config.source.clone()).await {
                                Ok(names) => eprintln!("plugins reloaded: {}", names.join(", ")),
                                Err(e) => eprintln!("plugin reload refused, the running plugins stay: {e}"),
                            }
                        }
                    });
                }
                shutdown_signal().await;
                eprintln!("draining: no new calls; running calls have {} s to finish", config.limits.drain_seconds);
                gateway.drain(Duration::from_secs(config.limits.drain_seconds as u64)).await;
                eprintln!("stopped");
                ExitCode::SUCCESS
            })
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                println!(
                    "{}: OK ({} trunks, {} targets)",
                    file.display(),
                    config.trunks.len(),
                    config.targets.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Dial {
            config,
            trunk,
            to,
            from,
            seconds,
            tone,
            dtmf,
            answer_timeout,
            json,
        } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let options = DialOptions {
                trunk,
                to,
                from,
                seconds,
                tone_hz: tone,
                dtmf,
                answer_timeout: Duration::from_secs_f64(answer_timeout.max(0.1)),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            let report = match runtime.block_on(dial(&config, &options)) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                println!(
                    "SIP {} {} via trunk {}",
                    report.sip_code,
                    report.reason,
                    report.trunk_used.as_deref().unwrap_or("-")
                );
                if let Some(ms) = report.setup_ms {
                    println!(
                        "setup {ms:.1} ms; RTP sent {} received {}",
                        report.rtp_sent, report.rtp_received
                    );
                    match report.tone_snr_db {
                        Some(snr) => println!(
                            "tone {} Hz came back: {} (SNR {snr} dB)",
                            tone,
                            if report.tone_detected { "yes" } else { "no" }
                        ),
                        None => println!("tone {tone} Hz came back: no"),
                    }
                    if !report.dtmf_received.is_empty() {
                        println!("DTMF received: {}", report.dtmf_received);
                    }
                    println!("ended by {}", report.ended_by);
                }
            }
            if report.connected {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
