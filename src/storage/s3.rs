//! An S3 bucket or an S3-compatible server (MinIO, Ceph): `s3://BUCKET/PREFIX?options`.
//!
//! Uploads stream: the body is cut into parts held in memory, a few uploaded
//! at once, so memory stays at part size × (parts in flight + 1) whatever the
//! backup's size. An upload that cannot complete is aborted, so a failed
//! backup leaves neither an object nor an unfinished multipart upload.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use super::{Body, ObjectExists, ObjectInfo, ObjectNotFound, ObjectReader, Storage};

const MIB: usize = 1 << 20;
/// 8 MiB keeps a 1 GiB backup under 64 MiB of memory (scripts/bench) and
/// still allows objects of 78 GiB in 10,000 parts.
pub const DEFAULT_PART_SIZE: usize = 8 * MIB;
/// S3's minimum for every part but the last.
pub const MIN_PART_SIZE: usize = 5 * MIB;
/// Parts are held in memory; beyond this a sidecar's memory limit is at risk.
pub const MAX_PART_SIZE: usize = 512 * MIB;
pub const DEFAULT_CONCURRENCY: usize = 2;
const MAX_CONCURRENCY: usize = 32;
/// S3's limit on parts in one multipart upload.
const MAX_PARTS: i32 = 10_000;
/// More than the SDK's default 3: a backup that fails on one transient error is
/// retaken only at the next schedule. `AWS_MAX_ATTEMPTS` overrides it.
const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// `server-side-encryption=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sse {
    Aes256,
    Kms,
}

/// `checksum=`: whether every request carries a CRC32 (`when-supported`, the
/// SDK's default) or only those S3 requires one for (`when-required`), for
/// S3-compatible servers that reject the newer checksum headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumPolicy {
    WhenSupported,
    WhenRequired,
}

/// An `s3://` destination, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub sse: Option<Sse>,
    pub kms_key_id: Option<String>,
    pub profile: Option<String>,
    /// `None`: as the AWS configuration says (`AWS_REQUEST_CHECKSUM_CALCULATION`), else `when-supported`.
    pub checksum: Option<ChecksumPolicy>,
    pub part_size: usize,
    pub concurrency: usize,
}

const OPTIONS: &str = "region, endpoint, force-path-style, server-side-encryption, kms-key-id, profile, checksum, part-size, concurrency";

impl S3Options {
    /// Parses `s3://BUCKET/PREFIX?option=value&…`; errors name `text`.
    pub fn parse(text: &str, url: &url::Url) -> Result<Self> {
        let invalid = |why: String| anyhow!("invalid destination {text:?}: {why}");
        let bucket = url.host_str().unwrap_or_default().to_string();
        if !valid_bucket(&bucket) {
            return Err(invalid(format!(
                "{bucket:?} is not a bucket name; expected s3://BUCKET/PREFIX"
            )));
        }
        let prefix = url.path().trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(invalid(format!(
                "prefix {prefix:?} has an empty or relative segment"
            )));
        }
        let mut options = S3Options {
            bucket,
            prefix,
            region: None,
            endpoint: None,
            force_path_style: false,
            sse: None,
            kms_key_id: None,
            profile: None,
            checksum: None,
            part_size: DEFAULT_PART_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
        };
        let mut seen = Vec::new();
        for (name, value) in url.query_pairs() {
            if seen.contains(&name) {
                return Err(invalid(format!("option {name:?} given twice")));
            }
            let value = value.to_string();
            let nonempty = |v: String| {
                if v.is_empty() {
                    Err(invalid(format!("option {name:?} needs a value")))
                } else {
                    Ok(v)
                }
            };
            match &*name {
                "region" => options.region = Some(nonempty(value)?),
                "endpoint" => {
                    let endpoint = nonempty(value)?;
                    let parsed = url::Url::parse(&endpoint).ok().filter(|u| {
                        matches!(u.scheme(), "http" | "https") && u.host_str().is_some()
                    });
                    if parsed.is_none() {
                        return Err(invalid(format!(
                            "endpoint {endpoint:?} is not an http:// or https:// URL"
                        )));
                    }
                    options.endpoint = Some(endpoint);
                }
                "force-path-style" => {
                    options.force_path_style = match &*value {
                        "true" | "" => true,
                        "false" => false,
                        _ => {
                            return Err(invalid(format!(
                                "force-path-style={value:?}: expected true or false"
                            )));
                        }
                    }
                }
                "server-side-encryption" => {
                    options.sse = Some(match &*value {
                        "AES256" => Sse::Aes256,
                        "aws:kms" => Sse::Kms,
                        _ => {
                            return Err(invalid(format!(
                                "server-side-encryption={value:?}: expected AES256 or aws:kms"
                            )));
                        }
                    })
                }
                "kms-key-id" => options.kms_key_id = Some(nonempty(value)?),
                "profile" => options.profile = Some(nonempty(value)?),
                "checksum" => {
                    options.checksum = Some(match &*value {
                        "when-supported" => ChecksumPolicy::WhenSupported,
                        "when-required" => ChecksumPolicy::WhenRequired,
                        _ => {
                            return Err(invalid(format!(
                                "checksum={value:?}: expected when-supported or when-required"
                            )));
                        }
                    })
                }
                "part-size" => {
                    let size = parse_size(&value).ok_or_else(|| {
                        invalid(format!(
                            "part-size={value:?}: expected a size such as 16MiB"
                        ))
                    })?;
                    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) {
                        return Err(invalid(format!(
                            "part-size={value}: must be between 5MiB (S3's minimum) and 512MiB"
                        )));
                    }
                    options.part_size = size;
                }
                "concurrency" => {
                    options.concurrency = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
                        .ok_or_else(|| {
                            invalid(format!(
                                "concurrency={value:?}: expected a number of parts from 1 to {MAX_CONCURRENCY}"
                            ))
                        })?;
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown option {name:?}; known options: {OPTIONS}"
                    )));
                }
            }
            seen.push(name);
        }
        if options.kms_key_id.is_some() && options.sse != Some(Sse::Kms) {
            return Err(invalid(
                "kms-key-id needs server-side-encryption=aws:kms".to_string(),
            ));
        }
        Ok(options)
    }
}

impl fmt::Display for S3Options {
    /// The URL back, with the options that differ from the defaults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(region) = &self.region {
            query.append_pair("region", region);
        }
        if let Some(endpoint) = &self.endpoint {
            query.append_pair("endpoint", endpoint);
        }
        if self.force_path_style {
            query.append_pair("force-path-style", "true");
        }
        match self.sse {
            Some(Sse::Aes256) => query.append_pair("server-side-encryption", "AES256"),
            Some(Sse::Kms) => query.append_pair("server-side-encryption", "aws:kms"),
            None => &mut query,
        };
        if let Some(key) = &self.kms_key_id {
            query.append_pair("kms-key-id", key);
        }
        if let Some(profile) = &self.profile {
            query.append_pair("profile", profile);
        }
        match self.checksum {
            Some(ChecksumPolicy::WhenRequired) => query.append_pair("checksum", "when-required"),
            Some(ChecksumPolicy::WhenSupported) => query.append_pair("checksum", "when-supported"),
            None => &mut query,
        };
        let query = query.finish();
        if !query.is_empty() {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// Bucket names as S3 allows them (3–63 of `a-z0-9.-`), so a typo fails early.
fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `8388608`, `8MiB`, `8M`, `512KiB`, `1GiB`.
fn parse_size(text: &str) -> Option<usize> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number.parse().ok()?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// What messages about this storage name: the bucket, the configured prefix, the server.
#[derive(Debug)]
struct Place {
    bucket: String,
    prefix: String,
    endpoint: String,
}

/// The objects of one virtual cluster under `s3://bucket/prefix/<vcluster>/`.
pub struct S3Storage {
    client: Client,
    options: S3Options,
    place: Arc<Place>,
    /// `prefix/vcluster/`: every key this storage touches starts with it.
    dir: String,
    /// Whether uploads carry a CRC32 of every part.
    checksums: bool,
    /// Whether writes carry `If-None-Match: *`; off once the server says it lacks them.
    conditional_writes: AtomicBool,
}

impl S3Storage {
    /// Builds a client from the AWS default configuration chain (environment,
    /// profile, web identity, EKS Pod Identity, instance metadata); credentials
    /// are cached and refreshed by the SDK before they expire.
    pub async fn open(options: &S3Options, vcluster: &str) -> Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(profile) = &options.profile {
            loader = loader.profile_name(profile);
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            // S3-compatible servers rarely care about the region, but SigV4 needs one.
            if options.endpoint.is_some() {
                config = config.region(Region::from_static("us-east-1"));
            } else {
                bail!(
                    "no AWS region for bucket {}: add ?region=… to the destination or set AWS_REGION",
                    options.bucket
                );
            }
        }
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        config = config.force_path_style(options.force_path_style);
        if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
            config = config.retry_config(
                RetryConfig::standard()
                    .with_max_attempts(DEFAULT_MAX_ATTEMPTS)
                    .with_max_backoff(Duration::from_secs(20)),
            );
        }
        // A request that hangs must not hold the backup forever; retries follow.
        config = config.timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(600))
                .build(),
        );
        let policy = options
            .checksum
            .or(match shared.request_checksum_calculation() {
                Some(RequestChecksumCalculation::WhenRequired) => {
                    Some(ChecksumPolicy::WhenRequired)
                }
                _ => None,
            })
            .unwrap_or(ChecksumPolicy::WhenSupported);
        if policy == ChecksumPolicy::WhenRequired {
            config = config
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let endpoint = match (&options.endpoint, shared.region()) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(region)) => format!("S3 in {region}"),
            (None, None) => "S3".to_string(),
        };
        let dir = match options.prefix.as_str() {
            "" => format!("{vcluster}/"),
            prefix => format!("{prefix}/{vcluster}/"),
        };
        Ok(S3Storage {
            client: Client::from_conf(config.build()),
            options: options.clone(),
            place: Arc::new(Place {
                bucket: options.bucket.clone(),
                prefix: options.prefix.clone(),
                endpoint,
            }),
            dir,
            checksums: policy == ChecksumPolicy::WhenSupported,
            conditional_writes: AtomicBool::new(true),
        })
    }

    fn object_key(&self, key: &str) -> Result<String> {
        // Keys are our own object names; refuse anything that could leave the prefix.
        if key.is_empty() || key.contains('/') || key.starts_with('.') {
            bail!("invalid object name {key:?}");
        }
        Ok(format!("{}{key}", self.dir))
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.options.bucket)
    }

    /// Aborts the multipart uploads under this virtual cluster's prefix that
    /// were started before `cutoff`: the leftovers of agents killed mid-upload.
    /// Returns how many were aborted.
    async fn abort_uploads_started_before(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        let mut aborted = 0;
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let listed = self
                .client
                .list_multipart_uploads()
                .bucket(&self.options.bucket)
                .prefix(&self.dir)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await;
            let page = match listed {
                Ok(page) => page,
                // Some S3-compatible servers lack this call. The sweep is only a
                // safety net, so its absence must not fail every retention run.
                Err(err) if err.code() == Some("NotImplemented") => {
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| {
                        tracing::warn!(
                            destination = %self.location(),
                            "the server does not implement ListMultipartUploads, so uploads \
                             left by a killed agent are not cleaned up; add a bucket lifecycle \
                             rule AbortIncompleteMultipartUpload"
                        )
                    });
                    return Ok(aborted);
                }
                Err(err) => {
                    return Err(anyhow!(explain(&self.place, Action::ListUploads, &err)))
                        .with_context(|| {
                            format!("list unfinished uploads in {}", self.location())
                        });
                }
            };
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let started = upload.initiated().and_then(to_chrono);
                if started.is_none_or(|t| t >= cutoff) {
                    continue;
                }
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.options.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| anyhow!(explain(&self.place, Action::Abort, &e)))
                    .with_context(|| format!("abort unfinished upload of {}", self.url(key)))?;
                tracing::info!(key = %self.url(key), "aborted a stale multipart upload");
                aborted += 1;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_marker = page.next_upload_id_marker().map(str::to_string);
            if page.is_truncated() != Some(true)
                || (key_marker.is_none() && upload_marker.is_none())
            {
                return Ok(aborted);
            }
        }
    }

    async fn put_single(&self, key: &str, data: Bytes) -> Result<()> {
        loop {
            let conditional = self.conditional_writes.load(Ordering::Relaxed);
            let mut request = self
                .client
                .put_object()
                .bucket(&self.options.bucket)
                .key(key)
                .content_length(data.len() as i64)
                .body(ByteStream::from(data.clone()));
            if conditional {
                request = request.if_none_match("*");
            }
            if self.checksums {
                request = request.checksum_algorithm(ChecksumAlgorithm::Crc32);
            }
            if let Some(sse) = self.options.sse {
                request = request
                    .server_side_encryption(sse_header(sse))
                    .set_ssekms_key_id(self.options.kms_key_id.clone());
            }
            match request.send().await {
                Ok(_) => return Ok(()),
                Err(err) if conditional && self.lacks_conditional_writes(&err) => continue,
                Err(err) => return Err(self.put_error(key, &err)),
            }
        }
    }

    /// Whether `err` says the server does not support `If-None-Match`; if so,
    /// says it once and turns conditional writes off for this storage. Object
    /// names carry a random part, so unconditional writes still do not collide.
    fn lacks_conditional_writes<E: ProvideErrorMetadata>(
        &self,
        err: &SdkError<E, HttpResponse>,
    ) -> bool {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let unsupported = err.code() == Some("NotImplemented") || status == Some(501);
        if unsupported && self.conditional_writes.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                destination = %self.location(),
                "the server does not support conditional writes (If-None-Match); writing \
                 without them. Backup names carry a random part, so agents still cannot \
                 overwrite each other's backups"
            );
        }
        unsupported
    }

    /// A failed PUT or CompleteMultipartUpload in words, with a refused
    /// overwrite as [`ObjectExists`].
    fn put_error<E>(&self, key: &str, err: &SdkError<E, HttpResponse>) -> anyhow::Error
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        if err.code() == Some("PreconditionFailed") || status == Some(412) {
            return ObjectExists {
                key: key.strip_prefix(&self.dir).unwrap_or(key).to_string(),
                location: self.location(),
            }
            .into();
        }
        anyhow!(explain(&self.place, Action::Put, err))
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: Bytes,
        carry: Option<Bytes>,
        body: &mut Body,
    ) -> Result<()> {
        let mut request = self
            .client
            .create_multipart_upload()
            .bucket(&self.options.bucket)
            .key(key);
        if self.checksums {
            request = request.checksum_algorithm(ChecksumAlgorithm::Crc32);
        }
        if let Some(sse) = self.options.sse {
            request = request
                .server_side_encryption(sse_header(sse))
                .set_ssekms_key_id(self.options.kms_key_id.clone());
        }
        let created = request
            .send()
            .await
            .map_err(|e| anyhow!(explain(&self.place, Action::Put, &e)))
            .context("start multipart upload")?;
        let upload_id = created
            .upload_id()
            .context("start multipart upload: the server returned no upload ID")?
            .to_string();
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.options.bucket.clone(),
            key: key.to_string(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        let completed = match self.upload_parts(key, &upload_id, first, carry, body).await {
            Ok(parts) => self.complete(key, &upload_id, parts).await,
            Err(err) => Err(err),
        };
        guard.armed = false;
        let Err(err) = completed else {
            return Ok(());
        };
        // No partial object and no unfinished upload (which S3 bills for) may stay.
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.options.bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
        match aborted {
            Ok(_) => Err(err),
            Err(abort) => {
                let why = explain(&self.place, Action::Abort, &abort);
                tracing::warn!(
                    key = %self.url(key),
                    "could not abort the unfinished upload: {why}; a lifecycle rule \
                     AbortIncompleteMultipartUpload on the bucket removes it"
                );
                // The pipeline's own error explains an incomplete body; keep it recognisable.
                if super::IncompleteBody::is_cause_of(&err) {
                    return Err(err);
                }
                Err(anyhow!(
                    "{err:#}; aborting the upload failed too: {why} (a lifecycle rule \
                     AbortIncompleteMultipartUpload on the bucket removes it)"
                ))
            }
        }
    }

    /// Publishes the uploaded parts as the object, unless one exists already.
    async fn complete(&self, key: &str, upload_id: &str, parts: Vec<CompletedPart>) -> Result<()> {
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        loop {
            let conditional = self.conditional_writes.load(Ordering::Relaxed);
            let mut request = self
                .client
                .complete_multipart_upload()
                .bucket(&self.options.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(parts.clone());
            if conditional {
                request = request.if_none_match("*");
            }
            match request.send().await {
                Ok(_) => return Ok(()),
                Err(err) if conditional && self.lacks_conditional_writes(&err) => continue,
                Err(err) => {
                    return Err(self.put_error(key, &err)).context("complete multipart upload");
                }
            }
        }
    }

    /// Uploads the rest of the body as parts, `concurrency` at a time, while
    /// the next part is assembled; returns the parts in order.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        mut carry: Option<Bytes>,
        body: &mut Body,
    ) -> Result<Vec<CompletedPart>> {
        // Dropping `in_flight` on an early return cancels the parts still uploading.
        let mut in_flight = JoinSet::new();
        let mut done = Vec::new();
        let mut next = Some(first);
        let mut ended = false;
        let mut number = 0;
        while let Some(data) = next.take() {
            number += 1;
            if number > MAX_PARTS {
                bail!(
                    "the backup needs more than {MAX_PARTS} parts of {} MiB; raise part-size in the destination",
                    self.options.part_size / MIB
                );
            }
            while in_flight.len() >= self.options.concurrency {
                done.push(joined(in_flight.join_next().await)?);
            }
            in_flight.spawn(upload_part(
                self.client.clone(),
                Arc::clone(&self.place),
                key.to_string(),
                upload_id.to_string(),
                number,
                data,
                self.checksums,
            ));
            if !ended {
                let (data, last) = read_part(body, &mut carry, self.options.part_size).await?;
                ended = last;
                if !data.is_empty() {
                    next = Some(data);
                }
            }
        }
        while let Some(result) = in_flight.join_next().await {
            done.push(joined(Some(result))?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }
}

type Joined = Option<std::result::Result<Result<CompletedPart>, tokio::task::JoinError>>;

fn joined(result: Joined) -> Result<CompletedPart> {
    match result {
        Some(Ok(part)) => part,
        Some(Err(err)) => Err(anyhow!("a part upload panicked or was cancelled: {err}")),
        None => Err(anyhow!("no part upload in flight")),
    }
}

async fn upload_part(
    client: Client,
    place: Arc<Place>,
    key: String,
    upload_id: String,
    number: i32,
    data: Bytes,
    checksums: bool,
) -> Result<CompletedPart> {
    let size = data.len();
    // An in-memory body: the SDK can resend it on retry and sends its checksum in a header.
    let mut request = client
        .upload_part()
        .bucket(&place.bucket)
        .key(&key)
        .upload_id(&upload_id)
        .part_number(number)
        .content_length(size as i64)
        .body(ByteStream::from(data));
    if checksums {
        request = request.checksum_algorithm(ChecksumAlgorithm::Crc32);
    }
    let output = request
        .send()
        .await
        .map_err(|e| anyhow!(explain(&place, Action::Put, &e)))
        .with_context(|| format!("upload part {number}"))?;
    tracing::debug!(key = %key, part = number, size, "part uploaded");
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(output.e_tag().map(str::to_string))
        .set_checksum_crc32(output.checksum_crc32().map(str::to_string))
        .build())
}

/// Fills up to `size` bytes from `body`. `last` is true once the body has
/// ended; after a full part the next chunk is read ahead into `carry` to know.
async fn read_part(
    body: &mut Body,
    carry: &mut Option<Bytes>,
    size: usize,
) -> io::Result<(Bytes, bool)> {
    let mut part = BytesMut::with_capacity(size);
    loop {
        let chunk = match carry.take() {
            Some(chunk) => chunk,
            None => match body.next().await? {
                Some(chunk) => chunk,
                None => return Ok((part.freeze(), true)),
            },
        };
        let room = size - part.len();
        if chunk.len() <= room {
            part.extend_from_slice(&chunk);
        } else {
            part.extend_from_slice(&chunk[..room]);
            *carry = Some(chunk.slice(room..));
        }
        if part.len() == size {
            while carry.is_none() {
                match body.next().await? {
                    Some(chunk) if chunk.is_empty() => {}
                    Some(chunk) => *carry = Some(chunk),
                    None => return Ok((part.freeze(), true)),
                }
            }
            return Ok((part.freeze(), false));
        }
    }
}

/// Aborts the upload if `put` is cancelled midway (a daemon shutting down):
/// best effort, since the runtime may be going away too.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let request = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&self.upload_id);
            runtime.spawn(async move {
                let _ = request.send().await;
            });
        }
    }
}

fn sse_header(sse: Sse) -> ServerSideEncryption {
    match sse {
        Sse::Aes256 => ServerSideEncryption::Aes256,
        Sse::Kms => ServerSideEncryption::AwsKms,
    }
}

fn to_chrono(time: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.secs(), time.subsec_nanos())
}

#[async_trait]
impl Storage for S3Storage {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.options.bucket, self.dir)
    }

    async fn put(&self, key: &str, mut body: Body) -> Result<()> {
        let key = self.object_key(key)?;
        let mut carry = None;
        let (first, last) = read_part(&mut body, &mut carry, self.options.part_size).await?;
        if last {
            self.put_single(&key, first).await
        } else {
            self.put_multipart(&key, first, carry, &mut body).await
        }
    }

    async fn get(&self, key: &str) -> Result<ObjectReader> {
        let full = self.object_key(key)?;
        let response = self
            .client
            .get_object()
            .bucket(&self.options.bucket)
            .key(&full)
            .send()
            .await;
        match response {
            Ok(output) => Ok(Box::pin(output.body.into_async_read())),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                Err(ObjectNotFound {
                    key: key.to_string(),
                    location: self.location(),
                }
                .into())
            }
            Err(err) => Err(anyhow!(explain(&self.place, Action::Get, &err)))
                .with_context(|| format!("read {}", self.url(&full))),
        }
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.options.bucket)
            .prefix(&self.dir)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| anyhow!(explain(&self.place, Action::List, &e)))
                .with_context(|| format!("list {}", self.location()))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.dir)) else {
                    continue;
                };
                // Our own objects only: nothing nested, nothing hidden.
                if key.is_empty() || key.contains('/') || key.starts_with('.') {
                    continue;
                }
                objects.push(ObjectInfo {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object.last_modified().and_then(to_chrono),
                });
            }
        }
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.object_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.options.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| anyhow!(explain(&self.place, Action::Delete, &e)))
            .with_context(|| format!("delete {}", self.url(&full)))?;
        Ok(())
    }

    async fn abort_stale_uploads(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        self.abort_uploads_started_before(cutoff).await
    }
}

/// The fleet view (`vcbackup fleet`, `verify --all-vclusters`): kept apart
/// from the per-cluster storage above.
impl S3Storage {
    /// Every virtual cluster's storage under the destination's prefix: the
    /// folder names from one delimiter LIST (one request per 1000 names),
    /// all sharing one client and its credentials.
    pub async fn open_all(options: &S3Options) -> Result<Vec<(String, S3Storage)>> {
        // Only the client matters here; the folder of this one is never used.
        let root = Self::open(options, "_").await?;
        let prefix = match options.prefix.as_str() {
            "" => String::new(),
            prefix => format!("{prefix}/"),
        };
        let mut pages = root
            .client
            .list_objects_v2()
            .bucket(&options.bucket)
            .prefix(&prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut names = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| anyhow!(explain(&root.place, Action::List, &e)))
                .with_context(|| format!("list {options}"))?;
            for common in page.common_prefixes() {
                let name = common
                    .prefix()
                    .and_then(|p| p.strip_prefix(&prefix))
                    .and_then(|p| p.strip_suffix('/'));
                if let Some(name) = name.filter(|n| !n.is_empty() && !n.starts_with('.')) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let storage = S3Storage {
                    client: root.client.clone(),
                    options: root.options.clone(),
                    place: Arc::clone(&root.place),
                    dir: format!("{prefix}{name}/"),
                    checksums: root.checksums,
                    conditional_writes: AtomicBool::new(
                        root.conditional_writes.load(Ordering::Relaxed),
                    ),
                };
                (name, storage)
            })
            .collect())
    }
}

/// What a request was for: says which permission an AccessDenied lacks.
#[derive(Debug, Clone, Copy)]
enum Action {
    Put,
    Get,
    List,
    Delete,
    Abort,
    ListUploads,
}

impl Action {
    fn permission(self) -> &'static str {
        match self {
            Action::Put => "s3:PutObject",
            Action::Get => "s3:GetObject",
            Action::List => "s3:ListBucket",
            Action::Delete => "s3:DeleteObject",
            Action::Abort => "s3:AbortMultipartUpload",
            Action::ListUploads => "s3:ListBucketMultipartUploads",
        }
    }

    /// Listing permissions are granted on the bucket, the others on objects.
    fn on_bucket(self) -> bool {
        matches!(self, Action::List | Action::ListUploads)
    }
}

/// An SDK error in words an operator can act on. Never includes credentials:
/// the SDK's errors carry codes, messages and request IDs only.
fn explain<E>(place: &Place, action: Action, err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let code = err.code();
    let status = err.raw_response().map(|r| r.status().as_u16());
    let objects = match place.prefix.as_str() {
        "" => format!("arn:aws:s3:::{}/*", place.bucket),
        prefix => format!("arn:aws:s3:::{}/{prefix}/*", place.bucket),
    };
    let resource = if action.on_bucket() {
        format!("arn:aws:s3:::{}", place.bucket)
    } else {
        objects
    };
    match (code, status) {
        (Some("AccessDenied" | "AllAccessDisabled"), _) | (None, Some(403)) => {
            // S3 says only "Access Denied"; other servers sometimes say more.
            let said = err
                .message()
                .filter(|m| !m.eq_ignore_ascii_case("access denied"))
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            format!(
                "access denied{said} (check the IAM role's {} on {resource})",
                action.permission()
            )
        }
        (Some("NoSuchBucket"), _) => format!(
            "bucket {:?} does not exist at {} (check the bucket name, region and endpoint)",
            place.bucket, place.endpoint
        ),
        (Some("SignatureDoesNotMatch"), _) => "the request signature does not match \
             (SignatureDoesNotMatch): the secret access key is wrong for this access key ID"
            .to_string(),
        (Some("InvalidAccessKeyId"), _) => "the server does not know the access key ID \
             (InvalidAccessKeyId): check the credentials the agent runs with"
            .to_string(),
        (Some("ExpiredToken" | "TokenRefreshRequired"), _) => {
            "the session credentials have expired (ExpiredToken)".to_string()
        }
        (Some("InvalidToken"), _) => {
            "the session token is not valid (InvalidToken): check the credentials the agent runs with"
                .to_string()
        }
        (Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"), _) => format!(
            "bucket {:?} is in another region ({}): set ?region= in the destination to the bucket's region",
            place.bucket,
            code.unwrap_or_default()
        ),
        (Some(kms), _) if kms.starts_with("KMS") => format!(
            "KMS refused the encryption key ({kms}: {}): check kms-key-id and the role's kms:GenerateDataKey and kms:Decrypt on it",
            err.message().unwrap_or("no message")
        ),
        (Some(code), status) => format!(
            "{code}{}: {}",
            status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
            err.message().unwrap_or("no message")
        ),
        (None, _) => explain_transport(place, err),
    }
}

/// The messages of an error's causes, without the SDK's generic wrappers
/// ("dispatch failure", "other") and without repeats.
fn causes(err: &(dyn StdError + 'static)) -> String {
    const GENERIC: [&str; 7] = [
        "dispatch failure",
        "other",
        "io",
        "timeout",
        "user",
        "response error",
        "construction failure",
    ];
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !GENERIC.contains(&text.as_str()) && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        return DisplayErrorContext(err).to_string();
    }
    parts.join(": ")
}

/// Errors before any answer came: unreachable server, timeouts, no credentials.
fn explain_transport<E>(place: &Place, err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => {
                    return format!(
                        "cannot connect to {}: connection refused (is the endpoint right and the server up?)",
                        place.endpoint
                    );
                }
                io::ErrorKind::TimedOut => {
                    return format!("timed out connecting to {}", place.endpoint);
                }
                _ => {}
            }
        }
        source = cause.source();
    }
    let detail = causes(err);
    match err {
        SdkError::TimeoutError(_) => format!("no answer from {} in time", place.endpoint),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            format!("timed out talking to {}", place.endpoint)
        }
        SdkError::DispatchFailure(failure) if failure.is_io() => {
            format!("cannot reach {}: {detail}", place.endpoint)
        }
        _ if detail.contains("credentials") || detail.contains("Credentials") => format!(
            "no usable AWS credentials (the agent looks in the environment, the AWS profile, \
             web identity/IRSA, EKS Pod Identity and instance metadata): {detail}"
        ),
        _ => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Destination, body_channel};
    use std::io::Write;

    fn parse(text: &str) -> Result<S3Options> {
        match Destination::parse(text)? {
            Destination::S3(options) => Ok(options),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_s3_destinations() {
        let options = parse(
            "s3://my-bucket/backups/prod/?region=eu-west-1&endpoint=http://127.0.0.1:9000\
             &force-path-style=true&server-side-encryption=aws:kms&kms-key-id=alias/backup\
             &profile=ops&checksum=when-required&part-size=8MiB&concurrency=4",
        )
        .unwrap();
        assert_eq!(
            options,
            S3Options {
                bucket: "my-bucket".into(),
                prefix: "backups/prod".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:9000".into()),
                force_path_style: true,
                sse: Some(Sse::Kms),
                kms_key_id: Some("alias/backup".into()),
                profile: Some("ops".into()),
                checksum: Some(ChecksumPolicy::WhenRequired),
                part_size: 8 * MIB,
                concurrency: 4,
            }
        );
        let plain = parse("s3://bucket").unwrap();
        assert_eq!(
            (plain.prefix.as_str(), plain.part_size),
            ("", DEFAULT_PART_SIZE)
        );
        assert_eq!(plain.to_string(), "s3://bucket/");
    }

    #[test]
    fn rejects_bad_s3_destinations() {
        for (bad, why) in [
            ("s3:///prefix", "not a bucket name"),
            ("s3://Bucket/p", "not a bucket name"),
            ("s3://bucket/p?regoin=x", "unknown option \"regoin\""),
            (
                "s3://bucket/p?server-side-encryption=aes",
                "expected AES256 or aws:kms",
            ),
            (
                "s3://bucket/p?kms-key-id=k",
                "needs server-side-encryption=aws:kms",
            ),
            ("s3://bucket/p?part-size=1MiB", "between 5MiB"),
            ("s3://bucket/p?part-size=lots", "expected a size"),
            ("s3://bucket/p?concurrency=0", "concurrency"),
            ("s3://bucket/p?endpoint=minio:9000", "not an http"),
            ("s3://bucket/p?region=a&region=b", "given twice"),
            ("s3://bucket/a//b", "empty or relative segment"),
        ] {
            let err = format!("{:#}", Destination::parse(bad).unwrap_err());
            assert!(err.contains(bad) && err.contains(why), "{bad}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[tokio::test]
    async fn cuts_a_body_into_parts() {
        let (mut writer, mut body) = body_channel(3, 4);
        let producer = tokio::task::spawn_blocking(move || {
            writer.write_all(b"0123456789ab")?;
            writer.finish()
        });
        let mut carry = None;
        let mut parts = Vec::new();
        loop {
            let (part, last) = read_part(&mut body, &mut carry, 4).await.unwrap();
            parts.push(part);
            if last {
                break;
            }
        }
        producer.await.unwrap().unwrap();
        // The body is an exact multiple of the part size: no empty part at the end.
        assert_eq!(parts, [&b"0123"[..], b"4567", b"89ab"]);
    }

    /// An S3Storage on an in-process s3s-fs; returns the server's root too.
    async fn s3s_fs_storage() -> (S3Storage, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("bucket")).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        (storage_on(fs).await, root)
    }

    /// s3s-fs as a server that predates conditional writes and says so:
    /// `If-None-Match` gets 501 NotImplemented, everything else is served.
    struct WithoutConditionalWrites(s3s_fs::FileSystem);

    #[async_trait]
    impl s3s::S3 for WithoutConditionalWrites {
        async fn put_object(
            &self,
            req: s3s::S3Request<s3s::dto::PutObjectInput>,
        ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
            if req.input.if_none_match.is_some() {
                return Err(s3s::s3_error!(NotImplemented));
            }
            self.0.put_object(req).await
        }
        async fn complete_multipart_upload(
            &self,
            req: s3s::S3Request<s3s::dto::CompleteMultipartUploadInput>,
        ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CompleteMultipartUploadOutput>> {
            if req.input.if_none_match.is_some() {
                return Err(s3s::s3_error!(NotImplemented));
            }
            self.0.complete_multipart_upload(req).await
        }
        async fn create_multipart_upload(
            &self,
            req: s3s::S3Request<s3s::dto::CreateMultipartUploadInput>,
        ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CreateMultipartUploadOutput>> {
            self.0.create_multipart_upload(req).await
        }
        async fn upload_part(
            &self,
            req: s3s::S3Request<s3s::dto::UploadPartInput>,
        ) -> s3s::S3Result<s3s::S3Response<s3s::dto::UploadPartOutput>> {
            self.0.upload_part(req).await
        }
        async fn list_objects_v2(
            &self,
            req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
        ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
            self.0.list_objects_v2(req).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_without_conditional_writes_is_written_to_without_them() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("bucket")).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let storage = storage_on(WithoutConditionalWrites(fs)).await;
        storage.put("small", body_of(1000, 1)).await.unwrap();
        assert!(!storage.conditional_writes.load(Ordering::Relaxed));
        storage.put("large", body_of(11 * MIB, 1)).await.unwrap();
        let mut keys: Vec<_> = storage
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                ("large".to_string(), 11 * MIB as u64),
                ("small".to_string(), 1000)
            ]
        );
    }

    /// An S3Storage on `s3`, served in process with SigV4 checked.
    async fn storage_on(s3: impl s3s::S3) -> S3Storage {
        let mut service = s3s::service::S3ServiceBuilder::new(s3);
        service.set_auth(s3s::auth::SimpleAuth::from_single("AKIDTEST", "secret"));
        let service = service.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
                );
            }
        });
        let options = S3Options {
            part_size: MIN_PART_SIZE,
            ..parse(&format!(
                "s3://bucket/p?endpoint={endpoint}&force-path-style=true"
            ))
            .unwrap()
        };
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::from_static("us-east-1"))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .build();
        S3Storage {
            client: Client::from_conf(config),
            place: Arc::new(Place {
                bucket: options.bucket.clone(),
                prefix: options.prefix.clone(),
                endpoint,
            }),
            options,
            dir: "p/demo/".into(),
            checksums: true,
            conditional_writes: AtomicBool::new(true),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_stops_midway_aborts_the_multipart_upload() {
        let (storage, root) = s3s_fs_storage().await;
        let (mut writer, body) = body_channel(MIB, 4);
        // Two full parts, then the producer fails: no finish().
        let producer = tokio::task::spawn_blocking(move || writer.write_all(&vec![7u8; 11 * MIB]));
        let err = storage.put("x.zst.age", body).await.unwrap_err();
        producer.await.unwrap().unwrap();
        assert!(crate::storage::IncompleteBody::is_cause_of(&err), "{err:#}");
        let leftovers: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(storage.list().await.unwrap().is_empty());

        // The same storage then takes a complete object, in one PUT.
        crate::storage::put_bytes(&storage, "m.json", b"{}".to_vec())
            .await
            .unwrap();
        let listed = storage.list().await.unwrap();
        assert_eq!((listed[0].key.as_str(), listed[0].size), ("m.json", 2));
        let err = storage.get("missing").await.err().unwrap();
        assert!(err.downcast_ref::<ObjectNotFound>().is_some(), "{err:#}");
        storage.delete("m.json").await.unwrap();
        storage.delete("m.json").await.unwrap();
    }

    /// A body of `len` bytes of `byte`, as the pipeline hands it to storage.
    fn body_of(len: usize, byte: u8) -> Body {
        let (mut writer, body) = body_channel(MIB, 4);
        tokio::task::spawn_blocking(move || {
            writer.write_all(&vec![byte; len])?;
            writer.finish()
        });
        body
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_writer_of_a_name_fails_and_leaves_the_first_object() {
        use tokio::io::AsyncReadExt;
        let (storage, root) = s3s_fs_storage().await;
        // A single PUT (under one part) and a multipart upload (11 MiB in 5 MiB parts).
        for (key, len) in [("small.zst.age", 1000), ("large.zst.age", 11 * MIB)] {
            storage.put(key, body_of(len, 1)).await.unwrap();
            let err = storage.put(key, body_of(len, 2)).await.unwrap_err();
            assert!(err.is::<ObjectExists>(), "{key}: {err:#}");
            assert!(format!("{err:#}").contains("not overwritten"), "{err:#}");
            let mut stored = Vec::new();
            storage
                .get(key)
                .await
                .unwrap()
                .read_to_end(&mut stored)
                .await
                .unwrap();
            assert_eq!(stored.len(), len);
            assert!(stored.iter().all(|b| *b == 1), "{key} was overwritten");
        }
        // The refused multipart upload was aborted, not left to bill.
        let leftovers: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn an_incomplete_body_is_an_error() {
        let (mut writer, mut body) = body_channel(4, 4);
        tokio::task::spawn_blocking(move || writer.write_all(b"012345"))
            .await
            .unwrap()
            .unwrap();
        let mut carry = None;
        let err = read_part(&mut body, &mut carry, 16).await.unwrap_err();
        let err = anyhow::Error::from(err);
        assert!(crate::storage::IncompleteBody::is_cause_of(&err));
    }
}
