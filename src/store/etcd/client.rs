//! Reaching an etcd member: the endpoint's channel (connected eagerly, with
//! keep-alives), TLS from the vCluster pod's certificates (waited for while
//! the syncer copies them in), and errors that say what went wrong.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Certificate, Channel, Client, Identity, TlsOptions};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CERT_POLL: Duration = Duration::from_millis(500);

/// Client certificate files, as given on the command line (`None`: the vCluster default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Everything besides the endpoint that connecting needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    pub tls: EtcdTls,
    /// Where the vCluster certificates are, as `<data-dir>/pki/...`.
    pub data_dir: PathBuf,
    /// How long to wait for certificate files the syncer has not copied in yet.
    pub wait_for_certs: Duration,
}

/// The vCluster pod's etcd client files under the data directory.
pub fn default_cert_paths(data_dir: &Path) -> [PathBuf; 3] {
    let pki = data_dir.join("pki");
    [
        pki.join("etcd").join("ca.crt"),
        pki.join("apiserver-etcd-client.crt"),
        pki.join("apiserver-etcd-client.key"),
    ]
}

pub(super) async fn connect(endpoint: &str, tls: Option<TlsOptions>) -> Result<Client> {
    let mut builder = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("invalid etcd endpoint {endpoint:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        // Notices a member that vanished mid-snapshot instead of waiting forever.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .with_context(|| format!("configure TLS for etcd at {endpoint}"))?;
    }
    // Connecting eagerly (etcd-client's own channel is lazy and retries
    // forever) makes refused connections and TLS failures errors right here.
    let channel = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(5), builder.connect())
        .await
        .map_err(|_| timed_out(endpoint, "connect"))?
        .map_err(|err| explain_chain(endpoint, "connect", &err))?;
    Client::from_channel(Channel::Tonic(channel), None)
        .await
        .map_err(|err| explain(endpoint, "connect", &err))
}

/// Reads the CA and client certificate, waiting (bounded) for files the syncer
/// copies in when the pod starts.
pub(super) fn load_tls(given: &EtcdTls, data_dir: &Path, wait: Duration) -> Result<TlsOptions> {
    let [ca_default, cert_default, key_default] = default_cert_paths(data_dir);
    let cacert = given.cacert.clone().unwrap_or(ca_default);
    let cert = given.cert.clone().unwrap_or(cert_default);
    let key = given.key.clone().unwrap_or(key_default);
    let files = [cacert.as_path(), cert.as_path(), key.as_path()];
    wait_for_files(&files, wait)?;
    let read = |path: &Path, what: &str| {
        std::fs::read(path).with_context(|| format!("read etcd {what} {}", path.display()))
    };
    let ca = read(&cacert, "CA certificate (--etcd-cacert)")?;
    let cert_pem = read(&cert, "client certificate (--etcd-cert)")?;
    let key_pem = read(&key, "client key (--etcd-key)")?;
    Ok(TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert_pem, key_pem)))
}

fn wait_for_files(files: &[&Path], wait: Duration) -> Result<()> {
    // None: a wait longer than the clock can tell, which never ends.
    let deadline = Instant::now().checked_add(wait);
    let mut logged = false;
    loop {
        let missing: Vec<String> = files
            .iter()
            .filter(|f| !f.exists())
            .map(|f| f.display().to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "etcd client certificates missing after waiting {}: {}; the vCluster syncer copies them into <data-dir>/pki when it starts, or pass --etcd-cacert, --etcd-cert and --etcd-key",
                humantime::format_duration(wait),
                missing.join(", ")
            );
        }
        if !logged {
            tracing::info!(
                missing = %missing.join(", "),
                wait = %humantime::format_duration(wait),
                "waiting for the etcd client certificates (the syncer copies them in when it starts)"
            );
            logged = true;
        }
        std::thread::sleep(CERT_POLL);
    }
}

pub(super) fn timed_out(endpoint: &str, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} (etcd at {endpoint}): no answer within {}s; is etcd running and reachable there?",
        REQUEST_TIMEOUT.as_secs()
    )
}

pub(super) fn explain(endpoint: &str, what: &str, err: &etcd_client::Error) -> anyhow::Error {
    if let etcd_client::Error::GRpcStatus(status) = err {
        // etcd 3.4 sends its auth error unconverted, as code Unknown.
        let denied = matches!(
            status.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ) || status.message().contains("permission denied");
        if denied {
            return anyhow::anyhow!(
                "{what} (etcd at {endpoint}): permission denied ({}); snapshots need a user with the root role (with client-certificate auth, the certificate's CN names the user)",
                status.message()
            );
        }
    }
    explain_chain(endpoint, what, err)
}

/// One line: the whole chain of causes (tonic hides the useful one deep
/// inside), and a hint for the usual mistakes.
fn explain_chain(
    endpoint: &str,
    what: &str,
    err: &(dyn std::error::Error + 'static),
) -> anyhow::Error {
    let cause = crate::error_chain::flatten(err, &[]);
    let lower = cause.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let hint = if has(&["badcertificate", "bad certificate", "certificaterequired"]) {
        // The server's alert: it did not accept our client certificate.
        "; etcd rejected the client certificate: check --etcd-cert and --etcd-key"
    } else if has(&[
        "certificate",
        "tls",
        "handshake",
        "alert",
        "unknownissuer",
        "x509",
    ]) {
        "; TLS failed: check --etcd-cacert, --etcd-cert and --etcd-key"
    } else if endpoint.starts_with("https://")
        && has(&[
            "connection closed",
            "connection reset",
            "broken pipe",
            "canceled",
        ])
    {
        // Under TLS 1.3 a rejected client certificate shows up only as a closed connection.
        "; etcd closed the connection, which over TLS usually means it rejected the client certificate: check --etcd-cert and --etcd-key"
    } else if has(&["refused", "dns", "timed out", "unreachable", "no route"]) {
        "; is etcd running and reachable there?"
    } else {
        ""
    };
    anyhow::anyhow!("{what} (etcd at {endpoint}): {cause}{hint}")
}
