//! An etcd member, snapshotted through the Maintenance API.
//!
//! etcd streams its bbolt file and then one more message: the SHA-256 of
//! everything before. All of it goes to the backup, digest included, because
//! `etcdctl snapshot restore` checks it; the digest is verified on the way
//! (keeping only a 32-byte tail) and a mismatch fails the backup.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Certificate, Channel, Client, Identity, TlsOptions};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use super::bolt::RevisionScanner;
use super::{SnapshotFacts, Source};
use crate::manifest::{EtcdFacts, SemanticRevision, SourceKind};

const DIGEST_LEN: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
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

pub struct EtcdSource {
    endpoint: String,
    client: Client,
    runtime: Handle,
    /// Stand by unless the member reached is the leader (`--ha`).
    leader_only: bool,
}

impl EtcdSource {
    /// Connects and asks for the member's status, so that an unreachable
    /// endpoint or a TLS problem fails before a backup starts. Must run on a
    /// blocking thread of the runtime.
    pub fn open(endpoint: &str, options: &EtcdOptions, leader_only: bool) -> Result<Self> {
        let runtime = Handle::try_current().context("etcd source: no async runtime")?;
        let tls = if endpoint.starts_with("https://") {
            Some(load_tls(
                &options.tls,
                &options.data_dir,
                options.wait_for_certs,
            )?)
        } else {
            if options.tls != EtcdTls::default() {
                tracing::warn!(
                    endpoint,
                    "plain-HTTP endpoint: --etcd-cacert, --etcd-cert and --etcd-key are ignored"
                );
            }
            None
        };
        let client = runtime.block_on(connect(endpoint, tls))?;
        let mut source = EtcdSource {
            endpoint: endpoint.to_string(),
            client,
            runtime: runtime.clone(),
            leader_only,
        };
        let status = runtime.block_on(source.status())?;
        tracing::info!(
            endpoint,
            server_version = %status.server_version,
            cluster_id = %status.cluster_id,
            member_id = %status.member_id,
            "connected to etcd"
        );
        Ok(source)
    }

    /// Range reads over the key ranges outside the ignored prefixes, each
    /// sorted by mod revision with limit 1 and keys only: the newest revision
    /// and the range's key count come back in one answer. Every read is pinned
    /// to the revision of the first, so the ranges describe one state.
    async fn semantic(&mut self) -> Result<SemanticRevision> {
        use etcd_client::{GetOptions, SortOrder, SortTarget};
        let what = "read the semantic revision";
        let mut at = 0;
        let mut semantic = SemanticRevision {
            revision: 0,
            keys: 0,
        };
        for (start, end) in super::semantic::ranges() {
            let mut options = GetOptions::new()
                .with_keys_only()
                .with_limit(1)
                .with_sort(SortTarget::Mod, SortOrder::Descend)
                .with_revision(at);
            options = match end {
                Some(end) => options.with_range(end),
                None => options.with_from_key(),
            };
            let response =
                tokio::time::timeout(REQUEST_TIMEOUT, self.client.get(start, Some(options)))
                    .await
                    .map_err(|_| timed_out(&self.endpoint, what))?
                    .map_err(|err| explain(&self.endpoint, what, &err))?;
            if at == 0 {
                at = response.header().map_or(0, |h| h.revision());
            }
            semantic.keys += u64::try_from(response.count()).unwrap_or(0);
            if let Some(kv) = response.kvs().first() {
                semantic.revision = semantic.revision.max(kv.mod_revision());
            }
        }
        Ok(semantic)
    }

    async fn status(&mut self) -> Result<Status> {
        let status = tokio::time::timeout(REQUEST_TIMEOUT, self.client.status())
            .await
            .map_err(|_| timed_out(&self.endpoint, "status"))?
            .map_err(|err| explain(&self.endpoint, "read status", &err))?;
        let header = status.header();
        Ok(Status {
            revision: header.map_or(0, |h| h.revision()),
            cluster_id: format!("{:x}", header.map_or(0, |h| h.cluster_id())),
            member_id: format!("{:x}", header.map_or(0, |h| h.member_id())),
            leader_id: format!("{:x}", status.leader()),
            server_version: status.version().to_string(),
        })
    }
}

struct Status {
    revision: i64,
    cluster_id: String,
    member_id: String,
    /// `0` while the cluster has no leader (an election is under way).
    leader_id: String,
    server_version: String,
}

impl Source for EtcdSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Etcd
    }

    fn describe(&self) -> String {
        self.endpoint.clone()
    }

    fn changes_after(
        self: Box<Self>,
        revision: i64,
    ) -> Result<Option<Box<dyn crate::increment::feed::Feed>>> {
        let (client, runtime) = (self.client.clone(), self.runtime.clone());
        // The feed keeps the source: it asks it whether this agent still leads (--ha).
        Ok(Some(Box::new(crate::increment::etcd::EtcdFeed::start(
            client, &runtime, revision, self,
        ))))
    }

    fn semantic_revision(&mut self) -> Result<Option<SemanticRevision>> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.semantic()).map(Some)
    }

    fn standby(&mut self) -> Result<Option<String>> {
        if !self.leader_only {
            return Ok(None);
        }
        let runtime = self.runtime.clone();
        let status = runtime.block_on(self.status())?;
        if status.leader_id == status.member_id {
            return Ok(None);
        }
        Ok(Some(if status.leader_id == "0" {
            format!(
                "etcd member {} at {} sees no leader (an election is under way); the leader's agent backs up",
                status.member_id, self.endpoint
            )
        } else {
            format!(
                "etcd member {} at {} is a follower; the agent beside leader {} backs up",
                status.member_id, self.endpoint, status.leader_id
            )
        }))
    }

    /// Runs on a blocking thread. Only the etcd calls are driven with
    /// `block_on`: writing to `out` can block on storage's full channel, which
    /// must happen outside the runtime.
    fn snapshot(&mut self, out: &mut dyn Write) -> Result<SnapshotFacts> {
        let runtime = self.runtime.clone();
        let before = runtime.block_on(self.status())?;
        let what = "take a snapshot";
        let mut stream = runtime
            .block_on(tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.client.snapshot(),
            ))
            .map_err(|_| timed_out(&self.endpoint, what))?
            .map_err(|err| explain(&self.endpoint, what, &err))?;
        let mut digest = DigestCheck::new();
        let mut scanner = RevisionScanner::new();
        while let Some(message) = runtime
            .block_on(stream.message())
            .map_err(|err| explain(&self.endpoint, what, &err))?
        {
            let blob = message.blob();
            out.write_all(blob).context("write snapshot")?;
            digest.update(blob, |db| scanner.feed(db));
        }
        let size = digest
            .finish()
            .with_context(|| format!("verify the snapshot of etcd at {}", self.endpoint))?;
        // The snapshot is already verified: a failed status call only costs the upper bound.
        let after = match runtime.block_on(self.status()) {
            Ok(after) => after,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "etcd status after the snapshot failed");
                Status {
                    revision: 0,
                    ..before
                }
            }
        };
        // Writes go on while the snapshot streams: the revision it holds is read from
        // the snapshot itself, and must lie between the two status calls.
        let revision = match scanner.finish() {
            Ok(rev) if rev >= before.revision && (after.revision == 0 || rev <= after.revision) => {
                Some(rev)
            }
            Ok(rev) => {
                tracing::warn!(
                    revision = rev,
                    before = before.revision,
                    after = after.revision,
                    "revision read from the snapshot is outside the revisions seen around it; not recording it"
                );
                None
            }
            Err(problem) => {
                tracing::warn!(%problem, "could not read the revision from the snapshot; not recording it");
                None
            }
        };
        tracing::info!(endpoint = %self.endpoint, size, revision, "etcd snapshot verified");
        Ok(SnapshotFacts {
            revision,
            etcd: Some(EtcdFacts {
                cluster_id: after.cluster_id,
                member_id: after.member_id,
                server_version: after.server_version,
            }),
        })
    }
}

/// Checks etcd's trailing SHA-256, which `etcdutl snapshot restore` insists on.
/// No revision bump: etcd restores at the snapshot's own revision.
pub fn check_restored_snapshot(path: &Path, what: &str) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open restored {what}"))?;
    verify_snapshot_digest(std::io::BufReader::new(file))
        .with_context(|| format!("check restored {what}"))?;
    Ok(())
}

async fn connect(endpoint: &str, tls: Option<TlsOptions>) -> Result<Client> {
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
fn load_tls(given: &EtcdTls, data_dir: &Path, wait: Duration) -> Result<TlsOptions> {
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
    let deadline = Instant::now() + wait;
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
        if Instant::now() >= deadline {
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

fn timed_out(endpoint: &str, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} (etcd at {endpoint}): no answer within {}s; is etcd running and reachable there?",
        REQUEST_TIMEOUT.as_secs()
    )
}

fn explain(endpoint: &str, what: &str, err: &etcd_client::Error) -> anyhow::Error {
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

/// Verifies etcd's trailing SHA-256 while the snapshot streams, holding back
/// only the last 32 bytes seen (which are the digest once the stream ends).
pub struct DigestCheck {
    hasher: Sha256,
    tail: Vec<u8>,
    size: u64,
}

impl Default for DigestCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl DigestCheck {
    pub fn new() -> Self {
        DigestCheck {
            hasher: Sha256::new(),
            tail: Vec::with_capacity(2 * DIGEST_LEN),
            size: 0,
        }
    }

    /// Takes the next bytes of the stream; `database` gets the bytes known not
    /// to be the digest, in order.
    pub fn update(&mut self, data: &[u8], mut database: impl FnMut(&[u8])) {
        if data.len() >= DIGEST_LEN {
            let (body, tail) = data.split_at(data.len() - DIGEST_LEN);
            let held = std::mem::take(&mut self.tail);
            for part in [held.as_slice(), body] {
                self.hasher.update(part);
                database(part);
                self.size += part.len() as u64;
            }
            self.tail = held;
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > DIGEST_LEN {
                let excess = self.tail.len() - DIGEST_LEN;
                self.hasher.update(&self.tail[..excess]);
                database(&self.tail[..excess]);
                self.size += excess as u64;
                self.tail.drain(..excess);
            }
        }
    }

    /// Checks the digest; returns the size of the database before it.
    pub fn finish(self) -> Result<u64> {
        if self.tail.len() < DIGEST_LEN {
            bail!(
                "the snapshot stream ended after {} bytes, before etcd's SHA-256",
                self.size + self.tail.len() as u64
            );
        }
        let actual = self.hasher.finalize();
        if actual.as_slice() != self.tail.as_slice() {
            bail!(
                "the snapshot's SHA-256 ({}) does not match the digest etcd sent ({}): the snapshot is corrupt; nothing is kept",
                hex::encode(actual),
                hex::encode(&self.tail)
            );
        }
        Ok(self.size)
    }
}

/// Checks etcd's trailing SHA-256 of a whole snapshot file.
pub fn verify_snapshot_digest(mut input: impl std::io::Read) -> Result<u64> {
    let mut check = DigestCheck::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("read the snapshot"),
        };
        check.update(&buf[..n], |_| {});
    }
    check.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_of(db: &[u8]) -> Vec<u8> {
        let mut file = db.to_vec();
        file.extend_from_slice(&Sha256::digest(db));
        file
    }

    fn check_in_pieces(file: &[u8], piece: usize) -> (Result<u64>, Vec<u8>) {
        let mut check = DigestCheck::new();
        let mut seen = Vec::new();
        for chunk in file.chunks(piece) {
            check.update(chunk, |db| seen.extend_from_slice(db));
        }
        (check.finish(), seen)
    }

    #[test]
    fn a_good_digest_passes_whatever_the_message_sizes() {
        let db: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = snapshot_of(&db);
        for piece in [1, 5, 31, 32, 33, 64, 4096, 32 * 1024, file.len()] {
            let (result, seen) = check_in_pieces(&file, piece);
            assert_eq!(result.unwrap(), db.len() as u64, "piece {piece}");
            assert_eq!(seen, db, "piece {piece}");
        }
    }

    #[test]
    fn a_tampered_snapshot_fails() {
        let db = vec![7u8; 70_000];
        let mut file = snapshot_of(&db);
        file[1234] ^= 1;
        let err = check_in_pieces(&file, 32 * 1024).0.unwrap_err().to_string();
        assert!(err.contains("does not match the digest etcd sent"), "{err}");

        let mut file = snapshot_of(&db);
        let last = file.len() - 1;
        file[last] ^= 1;
        assert!(verify_snapshot_digest(file.as_slice()).is_err());
    }

    #[test]
    fn a_stream_without_digest_fails() {
        let err = check_in_pieces(&[1u8; 20], 7).0.unwrap_err().to_string();
        assert!(err.contains("before etcd's SHA-256"), "{err}");
        // 32 bytes of something that is not the SHA-256 of nothing.
        assert!(verify_snapshot_digest(&[0u8; 32][..]).is_err());
        assert_eq!(verify_snapshot_digest(&snapshot_of(b"")[..]).unwrap(), 0);
    }
}
