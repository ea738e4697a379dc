//! An etcd member, snapshotted through the Maintenance API.
//!
//! etcd streams its bbolt file and then one more message: the SHA-256 of
//! everything before. All of it goes to the backup, digest included, because
//! `etcdctl snapshot restore` checks it; the digest is verified on the way
//! (keeping only a 32-byte tail) and a mismatch fails the backup.

use std::io::Write;

use anyhow::{Context, Result};
use etcd_client::Client;
use tokio::runtime::Handle;

use super::bolt::RevisionScanner;
use super::client::{EtcdOptions, EtcdTls, REQUEST_TIMEOUT, connect, explain, load_tls, timed_out};
use super::digest::DigestCheck;
use crate::increment::feed::Feed;
use crate::manifest::{EtcdFacts, SemanticRevision, SourceKind};
use crate::store::{SnapshotFacts, Source};

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
        for (start, end) in crate::store::semantic::ranges() {
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

    fn changes_after(self: Box<Self>, revision: i64) -> Result<Option<Box<dyn Feed>>> {
        let (client, runtime) = (self.client.clone(), self.runtime.clone());
        // The feed keeps the source: it asks it whether this agent still leads (--ha).
        Ok(Some(Box::new(super::feed::EtcdFeed::start(
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
