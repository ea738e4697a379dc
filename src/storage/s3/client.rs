//! The SDK client for one virtual cluster's objects, built from the AWS default
//! configuration chain, and the requests every write shares: the same
//! encryption and checksum headers on a single PUT and a multipart upload,
//! conditional writes, one abort request.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder;
use aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder;
use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::explain::{Action, Place, explain};
use super::options::{ChecksumPolicy, S3Options, Sse};
use crate::storage::{ObjectExists, check_key};

/// More than the SDK's default 3: a backup that fails on one transient error is
/// retaken only at the next schedule. `AWS_MAX_ATTEMPTS` overrides it.
const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// Where one virtual cluster's objects live, and the client that reaches them.
pub(super) struct Bucket {
    pub client: Client,
    pub place: Arc<Place>,
    /// `prefix/vcluster/`: every key this storage touches starts with it.
    pub dir: String,
    sse: Option<Sse>,
    kms_key_id: Option<String>,
    /// Whether uploads carry a CRC32 of every part.
    pub checksums: bool,
    /// Whether writes carry `If-None-Match: *`; off once the server says it lacks them.
    conditional_writes: AtomicBool,
}

impl Bucket {
    /// Builds a client from the AWS default configuration chain (environment,
    /// profile, web identity, EKS Pod Identity, instance metadata); credentials
    /// are cached and refreshed by the SDK before they expire.
    pub async fn connect(options: &S3Options, vcluster: &str) -> Result<Self> {
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
        let client = Client::from_conf(config.build());
        let checksums = policy == ChecksumPolicy::WhenSupported;
        Ok(Bucket::new(client, options, endpoint, vcluster, checksums))
    }

    /// `endpoint` names the server in messages.
    pub fn new(
        client: Client,
        options: &S3Options,
        endpoint: String,
        vcluster: &str,
        checksums: bool,
    ) -> Self {
        let dir = match options.prefix.as_str() {
            "" => format!("{vcluster}/"),
            prefix => format!("{prefix}/{vcluster}/"),
        };
        Bucket {
            client,
            place: Arc::new(Place {
                bucket: options.bucket.clone(),
                prefix: options.prefix.clone(),
                endpoint,
            }),
            dir,
            sse: options.sse,
            kms_key_id: options.kms_key_id.clone(),
            checksums,
            conditional_writes: AtomicBool::new(true),
        }
    }

    pub fn name(&self) -> &str {
        &self.place.bucket
    }

    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.name(), self.dir)
    }

    /// The full key of object `key`, which must be one of our own names.
    pub fn key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.dir))
    }

    /// A full key as a URL, for messages.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name())
    }

    #[cfg(test)]
    pub fn conditional_writes(&self) -> bool {
        self.conditional_writes.load(Ordering::Relaxed)
    }

    /// Encryption and checksum, the same whether an object goes up in one PUT
    /// or in parts: which one depends only on its size.
    fn with_write_headers<R: WriteHeaders>(&self, mut request: R) -> R {
        if self.checksums {
            request = request.checksum(ChecksumAlgorithm::Crc32);
        }
        if let Some(sse) = self.sse {
            let sse = match sse {
                Sse::Aes256 => ServerSideEncryption::Aes256,
                Sse::Kms => ServerSideEncryption::AwsKms,
            };
            request = request.encryption(sse, self.kms_key_id.clone());
        }
        request
    }

    /// Stores `data` under the full `key` in one request.
    pub async fn put_object(&self, key: &str, data: Bytes) -> Result<()> {
        self.write_once(key, |if_none_match| {
            let request = self
                .client
                .put_object()
                .bucket(self.name())
                .key(key)
                .content_length(data.len() as i64)
                .body(ByteStream::from(data.clone()))
                .set_if_none_match(if_none_match);
            self.with_write_headers(request).send()
        })
        .await
    }

    pub fn create_multipart_upload(&self, key: &str) -> CreateMultipartUploadFluentBuilder {
        let request = self.client.create_multipart_upload().bucket(self.name());
        self.with_write_headers(request.key(key))
    }

    /// Publishes the uploaded parts as the object, unless one exists already.
    pub async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<()> {
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        self.write_once(key, |if_none_match| {
            self.client
                .complete_multipart_upload()
                .bucket(self.name())
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(parts.clone())
                .set_if_none_match(if_none_match)
                .send()
        })
        .await
    }

    /// Every abort goes out as this request: after a failed upload, when a put
    /// is cancelled, and in the stale-upload sweep.
    pub fn abort_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
    ) -> AbortMultipartUploadFluentBuilder {
        self.client
            .abort_multipart_upload()
            .bucket(self.name())
            .key(key)
            .upload_id(upload_id)
    }

    /// Sends a write built by `send` with `If-None-Match: *` while the server
    /// takes it, without once the server says it cannot; a refused overwrite
    /// becomes [`ObjectExists`].
    async fn write_once<T, E, F, Fut>(&self, key: &str, send: F) -> Result<()>
    where
        F: Fn(Option<String>) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        loop {
            let conditional = self.conditional_writes.load(Ordering::Relaxed);
            match send(conditional.then(|| "*".to_string())).await {
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
}

/// The headers a PUT and a CreateMultipartUpload share, so that
/// [`Bucket::with_write_headers`] sets them for both.
trait WriteHeaders: Sized {
    fn checksum(self, algorithm: ChecksumAlgorithm) -> Self;
    fn encryption(self, sse: ServerSideEncryption, kms_key_id: Option<String>) -> Self;
}

macro_rules! write_headers {
    ($($builder:ty),*) => {$(
        impl WriteHeaders for $builder {
            fn checksum(self, algorithm: ChecksumAlgorithm) -> Self {
                self.checksum_algorithm(algorithm)
            }
            fn encryption(self, sse: ServerSideEncryption, kms_key_id: Option<String>) -> Self {
                self.server_side_encryption(sse).set_ssekms_key_id(kms_key_id)
            }
        }
    )*};
}

write_headers!(PutObjectFluentBuilder, CreateMultipartUploadFluentBuilder);

pub(super) fn to_chrono(time: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.secs(), time.subsec_nanos())
}
