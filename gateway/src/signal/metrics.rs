//! `/metrics`: the gateway's counters in the Prometheus text format (calls, setup time,
//! media quality, what the edge kept out, plugin counters).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::call::CallContext;

/// A metric's `# HELP` and `# TYPE` lines.
fn header(text: &mut String, name: &str, kind: &str, help: &str) {
    text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

fn metric(text: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(text, name, kind, help);
    text.push_str(&format!("{name} {value}\n"));
}

/// One series per media worker, labelled `worker="N"` in the workers' order.
fn per_worker<T: std::fmt::Display>(
    text: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    values: impl IntoIterator<Item = T>,
) {
    header(text, name, kind, help);
    for (worker, value) in values.into_iter().enumerate() {
        text.push_str(&format!("{name}{{worker=\"{worker}\"}} {value}\n"));
    }
}

fn histogram(
    text: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    counts: impl IntoIterator<Item = u64>,
    total: u64,
    sum: f64,
) {
    header(text, name, "histogram", help);
    histogram_series(text, name, "", bounds, counts, total, sum);
}

/// One series of a histogram whose `# HELP` and `# TYPE` lines are written: its buckets,
/// sum and count, with `labels` (`plugin="crm"`, or none) on each line.
fn histogram_series(
    text: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: impl IntoIterator<Item = u64>,
    total: u64,
    sum: f64,
) {
    let (with, alone) = if labels.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{labels},"), format!("{{{labels}}}"))
    };
    let mut cumulative = 0;
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative += count;
        text.push_str(&format!(
            "{name}_bucket{{{with}le=\"{bound}\"}} {cumulative}\n"
        ));
    }
    text.push_str(&format!(
        "{name}_bucket{{{with}le=\"+Inf\"}} {total}\n{name}_sum{alone} {sum:.6}\n{name}_count{alone} {total}\n"
    ));
}

/// Names from plugins and configuration, kept to what a label value may hold unescaped.
fn label_value(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect()
}

/// `GET /metrics`: Prometheus text.
pub(super) async fn metrics(State(ctx): State<Arc<CallContext>>) -> Response {
    let m = &ctx.metrics;
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let answered = load(&m.calls_answered);
    let mut text = String::new();
    metric(
        &mut text,
        "gateway_active_calls",
        "gauge",
        "Calls in progress on this node.",
        m.calls.get(),
    );
    if let Some(cluster) = &ctx.cluster {
        metric(
            &mut text,
            "gateway_cluster_connected",
            "gauge",
            "1 while Redis answers; 0 while this node serves with its own counts alone.",
            u8::from(cluster.connected()),
        );
        metric(
            &mut text,
            "gateway_cluster_nodes",
            "gauge",
            "Live nodes of the cluster, this one included (0 while Redis is away).",
            cluster.live_nodes(),
        );
        metric(
            &mut text,
            "gateway_cluster_calls",
            "gauge",
            "Calls in progress on all live nodes, as this node last read them.",
            m.calls.get() + m.calls.others.load(Ordering::Relaxed),
        );
        metric(
            &mut text,
            "gateway_cluster_forwarded_total",
            "counter",
            "Trunk INVITEs forwarded to the node their browser is connected to.",
            load(&cluster.forwarded),
        );
    }
    metric(
        &mut text,
        "gateway_preflights_total",
        "counter",
        "Pre-call tests (`preflight`) started; each holds a call slot while it echoes.",
        load(&m.preflights_total),
    );
    metric(
        &mut text,
        "gateway_renegotiations_asked_total",
        "counter",
        "Browsers asked for a new offer (`renegotiation_needed`) because their trunk's codec changed.",
        load(&m.renegotiations_asked),
    );
    metric(
        &mut text,
        "gateway_renegotiations_withheld_total",
        "counter",
        "Such asks withheld: the call's browser was asked ten times in the last minute (a trunk that keeps changing its codec).",
        load(&m.renegotiations_withheld),
    );
    metric(
        &mut text,
        "gateway_frames_relayed_total",
        "counter",
        "Opus frames relayed untouched between browser and an Opus trunk (ended calls).",
        load(&m.frames_relayed),
    );
    metric(
        &mut text,
        "gateway_frames_transcoded_total",
        "counter",
        "Opus frames decoded from or encoded for browsers on G.711 calls (ended calls).",
        load(&m.frames_transcoded),
    );
    metric(
        &mut text,
        "gateway_load_level",
        "gauge",
        "Media load: 0 normal, 1 economy (Opus at complexity 0), 2 shedding (new calls refused).",
        m.load.level() as u8,
    );
    metric(
        &mut text,
        "gateway_late_ticks_ratio",
        "gauge",
        "Share of the calls' 20 ms media ticks that ran late in the last second.",
        format!("{:.3}", m.load.late_permille() as f64 / 1000.0),
    );
    let ticks = m.load.tick_lateness();
    histogram(
        &mut text,
        "gateway_media_tick_lateness_seconds",
        "How late the calls' 20 ms media ticks ran after their time: the delay the gateway adds to each frame it codes.",
        &crate::call::load::TICK_LATENESS_BUCKETS,
        ticks.buckets,
        ticks.ticks,
        ticks.sum_seconds,
    );
    metric(
        &mut text,
        "gateway_calls_shed_total",
        "counter",
        "New calls refused for load: the media workers were busy ([limits] media_load_pct) or the media ran late.",
        load(&m.load.calls_shed),
    );
    // The tables calls fill and must empty again: a number that only grows is a leak.
    let tables = ctx.endpoint.tables();
    metric(
        &mut text,
        "gateway_sip_transactions",
        "gauge",
        "SIP transactions alive (client and server).",
        tables.transactions.load(Ordering::Relaxed),
    );
    metric(
        &mut text,
        "gateway_sip_dialogs",
        "gauge",
        "SIP Call-IDs routed to a running call.",
        tables.dialogs.load(Ordering::Relaxed),
    );
    metric(
        &mut text,
        "gateway_sip_queue_full_total",
        "counter",
        "SIP messages a full queue turned away because a call, the application or one of the gateway's own transactions fell behind: requests answered 503 with Retry-After, ACKs and dispensable responses dropped.",
        tables.queue_full.load(Ordering::Relaxed),
    );
    metric(
        &mut text,
        "gateway_media_routes",
        "gauge",
        "Browser legs routed on the shared WebRTC media port.",
        ctx.mux.calls(),
    );
    metric(
        &mut text,
        "gateway_media_direct_paths",
        "gauge",
        "Browser legs whose media the call reads on a socket of its own (connected to the browser).",
        ctx.mux.direct_paths(),
    );
    let workers = &ctx.workers;
    per_worker(
        &mut text,
        "gateway_media_worker_calls",
        "gauge",
        "Calls running on each media worker thread.",
        workers.calls(),
    );
    per_worker(
        &mut text,
        "gateway_media_worker_wakeups_total",
        "counter",
        "Times each media worker thread woke to run its calls: per event when quiet, at most \
         once a turn ([media] turn_ms) when busy.",
        workers.wakeups(),
    );
    per_worker(
        &mut text,
        "gateway_media_worker_sleeps_total",
        "counter",
        "Sleeps each busy media worker thread took waiting out its turns: one a turn, or one a \
         nap ([media] nap_us).",
        workers.sleeps(),
    );
    per_worker(
        &mut text,
        "gateway_media_worker_io_uring",
        "gauge",
        "Whether each media worker thread sends through io_uring (1), or with sendmmsg and \
         sendto (0: [media] io_uring = false, the kernel or a seccomp profile refused io_uring, \
         or the ring failed or refused sends; the log says which).",
        workers.io_uring().into_iter().map(u8::from),
    );
    per_worker(
        &mut text,
        "gateway_media_worker_busy_seconds_total",
        "counter",
        "Time each media worker thread spent running its calls (its rate is the share of a \
         core the worker uses; new calls go to the first worker under half busy).",
        workers
            .busy_seconds()
            .into_iter()
            .map(|b| format!("{b:.6}")),
    );
    per_worker(
        &mut text,
        "gateway_media_worker_demand",
        "gauge",
        "Share of a core each media worker's thread ran or waited for in its last measured \
         half second; new calls are refused while every worker's is above [limits] \
         media_load_pct.",
        workers.demand().into_iter().map(|d| format!("{d:.3}")),
    );
    let registered = ctx
        .registered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    metric(
        &mut text,
        "gateway_registered_identities",
        "gauge",
        "Identities registered by browsers for inbound calls.",
        registered,
    );
    metric(
        &mut text,
        "gateway_parked_calls",
        "gauge",
        "Calls whose signaling connection dropped, waiting to be resumed.",
        ctx.parked.len(),
    );
    metric(
        &mut text,
        "gateway_calls_total",
        "counter",
        "Calls started.",
        load(&m.calls_total),
    );
    metric(
        &mut text,
        "gateway_calls_answered_total",
        "counter",
        "Calls answered.",
        answered,
    );
    histogram(
        &mut text,
        "gateway_setup_seconds",
        "Time to answer: INVITE to 2xx for outbound calls, offer to browser answer for inbound.",
        &crate::call::SETUP_BUCKETS,
        m.setup_buckets.iter().map(load),
        answered,
        load(&m.setup_us_sum) as f64 / 1e6,
    );
    metric(
        &mut text,
        "gateway_browser_fec_recovered_total",
        "counter",
        "Browser frames rebuilt from Opus FEC.",
        load(&m.fec_recovered),
    );
    metric(
        &mut text,
        "gateway_trunk_concealed_total",
        "counter",
        "Trunk frames concealed by the jitter buffer.",
        load(&m.trunk_concealed),
    );
    metric(
        &mut text,
        "gateway_trunk_packets_received_total",
        "counter",
        "RTP packets received from trunks (ended calls).",
        load(&m.trunk_received),
    );
    metric(
        &mut text,
        "gateway_trunk_packets_lost_total",
        "counter",
        "RTP packets from trunks that never arrived (ended calls).",
        load(&m.trunk_lost),
    );
    histogram(
        &mut text,
        "gateway_trunk_jitter_ms",
        "Interarrival jitter of trunk RTP per call (RFC 3550).",
        &crate::call::JITTER_BUCKETS_MS,
        m.jitter_buckets.iter().map(load),
        load(&m.jitter_calls),
        load(&m.jitter_us_sum) as f64 / 1000.0,
    );
    header(
        &mut text,
        "gateway_calls_ended_total",
        "counter",
        "Calls ended, by reason.",
    );
    for (reason, count) in m.ended.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        text.push_str(&format!(
            "gateway_calls_ended_total{{reason=\"{reason}\"}} {count}\n"
        ));
    }
    header(
        &mut text,
        "gateway_media_dropped_total",
        "counter",
        "Media datagrams refused, by leg and reason (source: not from where signalling said, before a trunk's stream latched, after which the kernel refuses them; overflow: dropped by the kernel, the call's socket full).",
    );
    for (leg, reason, count) in m.media_drops.rows() {
        text.push_str(&format!(
            "gateway_media_dropped_total{{leg=\"{leg}\",reason=\"{reason}\"}} {count}\n"
        ));
    }
    header(
        &mut text,
        "gateway_sip_refused_total",
        "counter",
        "SIP requests kept out at the edge: from addresses that are no trunk (dropped or one stateless 403), or over a source's rate.",
    );
    let edge = ctx.endpoint.edge_counters();
    for (reason, count) in edge.rows() {
        text.push_str(&format!(
            "gateway_sip_refused_total{{reason=\"{reason}\"}} {count}\n"
        ));
    }
    metric(
        &mut text,
        "gateway_sip_sources_banned_total",
        "counter",
        "Times a SIP source went over its request rate and was ignored for a while.",
        edge.sources_banned.load(Ordering::Relaxed),
    );
    metric(
        &mut text,
        "gateway_sip_faults_total",
        "counter",
        "Faults (bugs) the SIP endpoint survived, each dropping the message, request or timers' run it happened in (the log has each).",
        edge.faults.load(Ordering::Relaxed),
    );
    metric(
        &mut text,
        "gateway_faults_total",
        "counter",
        "Panics (bugs) anywhere in the gateway, caught or not; the log has each, with where it happened.",
        crate::fault::FAULTS.load(Ordering::Relaxed),
    );
    metric(
        &mut text,
        "gateway_sip_unanswered_total",
        "counter",
        "Requests the gateway took and then dropped without a final response (a bug, or a call that faulted), answered 500 in their place (the log has each).",
        edge.unanswered.load(Ordering::Relaxed),
    );
    header(
        &mut text,
        "gateway_plugin_counter",
        "counter",
        "Counters plugins keep through the host.",
    );
    for (plugin, name, value) in ctx.plugins.current().counters() {
        text.push_str(&format!(
            "gateway_plugin_counter{{plugin=\"{}\",name=\"{}\"}} {value}\n",
            label_value(&plugin),
            label_value(&name)
        ));
    }
    header(
        &mut text,
        "gateway_plugin_preinitialised",
        "gauge",
        "1 when a plugin's calls start from a snapshot taken after its init; 0 when each call runs init.",
    );
    for (plugin, snapshot) in ctx.plugins.current().preinitialised() {
        text.push_str(&format!(
            "gateway_plugin_preinitialised{{plugin=\"{}\"}} {}\n",
            label_value(&plugin),
            u8::from(snapshot)
        ));
    }
    header(
        &mut text,
        "gateway_plugin_kv_bytes",
        "gauge",
        "Bytes of keys and values a plugin holds in its key-value store.",
    );
    for (plugin, bytes) in ctx.plugins.current().kv_bytes() {
        text.push_str(&format!(
            "gateway_plugin_kv_bytes{{plugin=\"{}\"}} {bytes}\n",
            label_value(&plugin)
        ));
    }
    plugin_http(&mut text, &ctx.plugins.current());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Plugins' HTTP callouts: how they ended, and how long the sent ones took.
fn plugin_http(text: &mut String, chain: &crate::plugin::PluginChain) {
    use crate::plugin::{HTTP_DURATION_BUCKETS, HTTP_OUTCOMES};
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let stats = chain.http_stats();
    header(
        text,
        "gateway_plugin_http_requests_total",
        "counter",
        "Plugins' HTTP callouts, by how they ended (denied and busy ones were not sent).",
    );
    for (plugin, s) in &stats {
        for (outcome, count) in HTTP_OUTCOMES.iter().zip(&s.outcomes) {
            text.push_str(&format!(
                "gateway_plugin_http_requests_total{{plugin=\"{}\",outcome=\"{outcome}\"}} {}\n",
                label_value(plugin),
                load(count)
            ));
        }
    }
    header(
        text,
        "gateway_plugin_http_seconds",
        "histogram",
        "Duration of plugins' HTTP callouts that were sent, to the whole response or the error.",
    );
    for (plugin, s) in &stats {
        histogram_series(
            text,
            "gateway_plugin_http_seconds",
            &format!("plugin=\"{}\"", label_value(plugin)),
            &HTTP_DURATION_BUCKETS,
            s.buckets.iter().map(load),
            load(&s.sent),
            load(&s.sum_us) as f64 / 1e6,
        );
    }
}
