//! `deploy/kubernetes`: the manifests validate against the Kubernetes API schema, offline
//! (PyPI's `kubernetes-validate`, which carries the schemas, in a virtualenv under
//! `target/`), and the configuration they ship loads as a real node's would.

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway::config::Config;
use gateway_tests::out_dir;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("kubernetes")
}

/// `kubernetes-validate` in a virtualenv of its own, installed once.
fn validator() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("k8s-venv");
    let bin = venv.join("bin").join("kubernetes-validate");
    if !bin.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin").join("pip"))
                .args(["install", "-q", "kubernetes-validate==1.37.0"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "installing kubernetes-validate from PyPI into {} failed",
            venv.display()
        );
    }
    bin
}

/// Runs the validator in strict mode (unknown fields are errors) on `files`.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let output = Command::new(validator())
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success() && !text.contains("ERROR"), text)
}

/// The resources kustomization.yaml applies.
fn resources() -> Vec<PathBuf> {
    let text = std::fs::read_to_string(deploy().join("kustomization.yaml")).unwrap();
    let mut in_resources = false;
    let mut files = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_resources = line.starts_with("resources:");
        } else if in_resources && let Some(file) = line.trim().strip_prefix("- ") {
            files.push(deploy().join(file));
        }
    }
    files
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schema_and_a_broken_one_does_not() {
    let files = resources();
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        assert!(
            file.is_file(),
            "kustomization.yaml lists {}",
            file.display()
        );
    }
    let (ok, report) = validate(&files);
    assert!(ok, "{report}");
    for kind in [
        "daemonset/gateway",
        "service/gateway",
        "secret/gateway-secrets",
        "deployment/redis",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}")),
            "{kind}: {report}"
        );
    }
    // The validator does refuse a mistake: a misspelt field in a copy of the DaemonSet.
    let dir = out_dir("kubernetes");
    let broken = dir.join("daemonset.yaml");
    let text = std::fs::read_to_string(deploy().join("daemonset.yaml")).unwrap();
    std::fs::write(
        &broken,
        text.replace("hostNetwork: true", "hostNetworking: true"),
    )
    .unwrap();
    let (ok, report) = validate(&[broken]);
    assert!(!ok && report.contains("hostNetworking"), "{report}");
}

#[test]
fn the_shipped_configuration_loads_as_a_nodes_would() {
    let dir = out_dir("kubernetes_config");
    // What the DaemonSet's start command does, with the Secret's files in the test's folder.
    let text = std::fs::read_to_string(deploy().join("gateway.toml"))
        .unwrap()
        .replace("@NODE_ID@", "worker-1")
        .replace("@NODE_IP@", "10.0.0.11")
        .replace("/run/secrets/gateway/", &format!("{}/", dir.display()))
        .replace("/var/log/gateway/", &format!("{}/", dir.display()));
    for secret in ["token-secret", "trunk-password", "redis-password"] {
        std::fs::write(dir.join(secret), "0123456789abcdef0123456789abcdef").unwrap();
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let cluster = config.cluster.expect("the cluster section");
    assert_eq!(cluster.node_id, "worker-1");
    assert_eq!(cluster.sip_address.as_deref(), Some("10.0.0.11:5060"));
    assert!(cluster.redis_password.is_some());
    // Every secret the manifests mount is one the configuration reads.
    let secret = std::fs::read_to_string(deploy().join("secret.yaml")).unwrap();
    for key in ["token-secret", "trunk-password", "redis-password"] {
        assert!(secret.contains(&format!("  {key}:")), "{key}");
    }
}
