//! `[[plugins]]`: each plugin's file, limits, failure policy and the HTTP URLs it may call.

use std::path::Path;
use std::time::Duration;

use super::checker::Checker;
use super::raw::RawPlugin;
use super::{PluginConfig, path_base};
use toml::Spanned;

/// The longest a plugin's HTTP callout may be allowed to take.
const MAX_HTTP_TIMEOUT_MS: u32 = 30_000;

/// The largest response body a plugin may be allowed to read.
const MAX_HTTP_RESPONSE_BYTES: u32 = 16 * 1024 * 1024;

/// What a plugin may ask of the outside world over HTTP (`http-fetch`), and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    /// The URLs it may call; empty: none (the default).
    pub allow: Vec<UrlPattern>,
    /// Connect, send and read the whole response within this.
    pub timeout: Duration,
    /// A longer response body is refused (`too-large`).
    pub max_response_bytes: usize,
    /// Requests of all its instances in flight at once; beyond, `busy`.
    pub max_concurrent: u32,
    /// A private CA (PEM) trusted for its `https` callouts, beside the public roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            allow: Vec::new(),
            timeout: Duration::from_millis(300),
            max_response_bytes: 64 * 1024,
            max_concurrent: 32,
            ca_file: None,
        }
    }
}

/// One entry of `allow_http`: an absolute `http(s)` URL naming one resource, or ending in
/// `*` for every path under a prefix (`https://crm.example/api/*`). Scheme, host and port
/// must match exactly; the path (and query) is compared after the URL is normalised, so
/// `https://crm.example/api/../admin` is `/admin` and not under `/api/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPattern {
    scheme: String,
    host: String,
    port: u16,
    /// Path and query.
    path: String,
    prefix: bool,
}

impl UrlPattern {
    /// Reads an `allow_http` entry; the error says what to write instead.
    pub fn parse(pattern: &str) -> Result<UrlPattern, String> {
        let (text, prefix) = match pattern.strip_suffix('*') {
            Some(head) => (head, true),
            None => (pattern, false),
        };
        if text.contains('*') {
            return Err(format!(
                "`{pattern}`: `*` may only end a pattern (`https://crm.example/api/*`); hosts are named exactly"
            ));
        }
        let url = url::Url::parse(text).map_err(|e| {
            format!("`{pattern}` is not an absolute URL ({e}); write it like `https://crm.example/api/*`")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "`{pattern}`: only http and https URLs can be allowed"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(format!(
                "`{pattern}`: no user, password or fragment in an allowed URL"
            ));
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(format!("`{pattern}` names no host"));
        };
        Ok(UrlPattern {
            scheme: url.scheme().to_string(),
            host: host.to_string(),
            port,
            path: path_and_query(&url).to_string(),
            prefix,
        })
    }

    /// Whether this entry allows `url` (already parsed, so normalised).
    pub fn allows(&self, url: &url::Url) -> bool {
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == Some(self.port)
            && url.username().is_empty()
            && url.password().is_none()
            && if self.prefix {
                path_and_query(url).starts_with(&self.path)
            } else {
                path_and_query(url) == self.path
            }
    }
}

/// The path and query of a URL, without its fragment.
fn path_and_query(url: &url::Url) -> &str {
    &url[url::Position::BeforePath..url::Position::AfterQuery]
}

/// Reads the `[[plugins]]` entries, noting every mistake in `c`.
pub(super) fn plugins(
    c: &mut Checker<'_>,
    raw: &[Spanned<RawPlugin>],
    file: &Path,
) -> Vec<PluginConfig> {
    let mut plugins = Vec::new();
    for (i, spanned) in raw.iter().enumerate() {
        let p = spanned.get_ref();
        let field = |f: &str| format!("plugins[{i}].{f}");
        // Relative to the configuration file (an absolute path replaces the base).
        let plugin_path = path_base(file).join(p.path.get_ref());
        if !plugin_path.is_file() {
            c.issue(
                p.path.span(),
                field("path"),
                format!(
                    "no plugin file at `{}`; build the plugin for wasm32-wasip2 first",
                    plugin_path.display()
                ),
            );
        }
        if plugins.iter().any(|q: &PluginConfig| q.name == p.name) {
            c.issue(
                spanned.span(),
                field("name"),
                format!("two plugins are named `{}`", p.name),
            );
        }
        let reject_code = p.reject_code.as_ref().map_or(503, |c| *c.get_ref());
        if !(400..700).contains(&reject_code)
            && let Some(code) = &p.reject_code
        {
            c.issue(
                code.span(),
                field("reject_code"),
                "a rejection needs a 4xx, 5xx or 6xx SIP status",
            );
        }
        let http = http_policy(c, p, file, &field);
        plugins.push(PluginConfig {
            name: p.name.clone(),
            path: plugin_path,
            config_json: serde_json::to_string(&p.config).unwrap_or_else(|_| "{}".into()),
            policy: p.policy,
            reject_code,
            memory_bytes: p.memory_mb.unwrap_or(16) as usize * 1024 * 1024,
            deadline: Duration::from_millis(p.deadline_ms.unwrap_or(20).max(1) as u64),
            max_instances: p.max_instances.unwrap_or(1000).max(1),
            data_dir: p
                .data_dir
                .as_ref()
                .map(|d| path_base(file).join(d.get_ref())),
            data_quota_bytes: p.data_quota_mb.unwrap_or(1024).saturating_mul(1024 * 1024),
            http,
        });
    }
    plugins
}

fn http_policy(
    c: &mut Checker<'_>,
    p: &RawPlugin,
    file: &Path,
    field: &dyn Fn(&str) -> String,
) -> HttpPolicy {
    let mut policy = HttpPolicy::default();
    if let Some(ca) = &p.http_ca_file {
        let path = path_base(file).join(ca.get_ref());
        match crate::sip::transport::tls_client_config(Some(&path)) {
            Ok(_) => policy.ca_file = Some(path),
            Err(e) => c.issue(ca.span(), field("http_ca_file"), e),
        }
    }
    if let Some(allow) = &p.allow_http {
        for entry in allow.get_ref() {
            match UrlPattern::parse(entry) {
                Ok(pattern) => policy.allow.push(pattern),
                Err(e) => c.issue(allow.span(), field("allow_http"), e),
            }
        }
    }
    let mut bounded = |value: &Option<Spanned<u32>>,
                       key: &str,
                       range: std::ops::RangeInclusive<u32>,
                       what: &str| {
        let v = value.as_ref()?;
        if range.contains(v.get_ref()) {
            Some(*v.get_ref())
        } else {
            c.issue(
                v.span(),
                field(key),
                format!("{what}: {} to {}", range.start(), range.end()),
            );
            None
        }
    };
    if let Some(ms) = bounded(
        &p.http_timeout_ms,
        "http_timeout_ms",
        1..=MAX_HTTP_TIMEOUT_MS,
        "milliseconds a callout may take",
    ) {
        policy.timeout = Duration::from_millis(ms as u64);
    }
    if let Some(bytes) = bounded(
        &p.http_max_response_bytes,
        "http_max_response_bytes",
        1..=MAX_HTTP_RESPONSE_BYTES,
        "the largest response body, in bytes",
    ) {
        policy.max_response_bytes = bytes as usize;
    }
    if let Some(n) = bounded(
        &p.http_max_concurrent,
        "http_max_concurrent",
        1..=1024,
        "callouts in flight at once",
    ) {
        policy.max_concurrent = n;
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::UrlPattern;

    fn allows(pattern: &str, url: &str) -> bool {
        UrlPattern::parse(pattern)
            .unwrap()
            .allows(&url::Url::parse(url).unwrap())
    }

    #[test]
    fn a_prefix_pattern_allows_only_its_own_origin_and_paths() {
        let p = "https://crm.example/api/*";
        assert!(allows(
            p,
            "https://crm.example/api/customers?number=%2B4930"
        ));
        assert!(allows(p, "https://CRM.example:443/api/x"));
        assert!(!allows(p, "https://crm.example/apix"));
        assert!(!allows(p, "https://crm.example/api/../admin"));
        assert!(!allows(p, "https://crm.example/api/%2e%2e/admin"));
        assert!(!allows(p, "http://crm.example/api/x"));
        assert!(!allows(p, "https://crm.example:8443/api/x"));
        assert!(!allows(p, "https://crm.example.evil.test/api/x"));
        assert!(!allows(p, "https://crm.example@evil.test/api/x"));
        assert!(!allows(p, "https://user@crm.example/api/x"));
    }

    #[test]
    fn an_exact_pattern_allows_that_url_only() {
        let p = "http://127.0.0.1:8080/lookup";
        assert!(allows(p, "http://127.0.0.1:8080/lookup"));
        assert!(allows(p, "http://127.0.0.1:8080/lookup#x"));
        assert!(!allows(p, "http://127.0.0.1:8080/lookup?x=1"));
        assert!(!allows(p, "http://127.0.0.1:8080/lookup/more"));
    }

    #[test]
    fn unusable_patterns_say_what_to_write() {
        for (pattern, says) in [
            ("crm.example/api/*", "not an absolute URL"),
            ("ftp://crm.example/*", "only http and https"),
            ("https://*.example/*", "`*` may only end"),
            ("https://u:p@crm.example/*", "no user"),
        ] {
            let err = UrlPattern::parse(pattern).unwrap_err();
            assert!(err.contains(says), "{pattern}: {err}");
        }
    }
}
