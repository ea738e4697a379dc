//! Objects larger than one part: cut into parts held in memory, a few
//! uploaded at once, so memory stays at part size × (parts in flight + 1)
//! whatever the backup's size. An upload that cannot complete is aborted, even
//! when the put is cancelled, and the sweep aborts those a killed agent left.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder;
use aws_sdk_s3::operation::abort_multipart_upload::{
    AbortMultipartUploadError, AbortMultipartUploadOutput,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedPart};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use super::client::{Bucket, to_chrono};
use super::explain::{Action, explain};
use super::options::MIB;
use crate::storage::{Body, IncompleteBody};

/// S3's limit on parts in one multipart upload.
const MAX_PARTS: i32 = 10_000;

/// How the body is cut and sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parts {
    pub size: usize,
    pub concurrency: usize,
}

/// Fills up to `size` bytes from `body`. `last` is true once the body has
/// ended; after a full part the next chunk is read ahead into `carry` to know.
pub(super) async fn read_part(
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

/// Uploads `first`, `carry` and the rest of `body` as the object `key` (a
/// full key); on failure aborts the upload, so no partial object and no
/// unfinished upload (which S3 bills for) stays.
pub(super) async fn put(
    bucket: &Arc<Bucket>,
    parts: Parts,
    key: &str,
    first: Bytes,
    carry: Option<Bytes>,
    body: &mut Body,
) -> Result<()> {
    let created = bucket
        .create_multipart_upload(key)
        .send()
        .await
        .map_err(|e| anyhow!(explain(&bucket.place, Action::Put, &e)))
        .context("start multipart upload")?;
    let id = created
        .upload_id()
        .context("start multipart upload: the server returned no upload ID")?;
    let upload = Arc::new(Upload {
        bucket: Arc::clone(bucket),
        key: key.to_string(),
        id: id.to_string(),
    });
    let abort = bucket.abort_multipart_upload(key, id);
    let mut guard = AbortOnDrop {
        in_flight: JoinSet::new(),
        request: Some(abort.clone()),
    };
    let uploaded = upload_parts(&upload, parts, first, carry, body, &mut guard.in_flight).await;
    let completed = match uploaded {
        Ok(done) => bucket
            .complete_multipart_upload(key, id, done)
            .await
            .context("complete multipart upload"),
        Err(err) => Err(err),
    };
    let in_flight = guard.disarm();
    let Err(err) = completed else {
        return Ok(());
    };
    let Err(failed) = settle_then_abort(in_flight, abort).await else {
        return Err(err);
    };
    let why = explain(&bucket.place, Action::Abort, &failed);
    tracing::warn!(
        key = %bucket.url(key),
        "could not abort the unfinished upload: {why}; a lifecycle rule \
         AbortIncompleteMultipartUpload on the bucket removes it"
    );
    // The pipeline's own error explains an incomplete body; keep it recognisable.
    if IncompleteBody::is_cause_of(&err) {
        return Err(err);
    }
    Err(anyhow!(
        "{err:#}; aborting the upload failed too: {why} (a lifecycle rule \
         AbortIncompleteMultipartUpload on the bucket removes it)"
    ))
}

/// One multipart upload under way, shared by the tasks uploading its parts.
struct Upload {
    bucket: Arc<Bucket>,
    key: String,
    id: String,
}

type InFlight = JoinSet<Result<CompletedPart>>;

/// Uploads the body as parts, `concurrency` at a time, while the next part is
/// assembled; returns the parts in order. On an early return the parts still
/// uploading stay in `in_flight`, for the abort to wait for.
async fn upload_parts(
    upload: &Arc<Upload>,
    parts: Parts,
    first: Bytes,
    mut carry: Option<Bytes>,
    body: &mut Body,
    in_flight: &mut InFlight,
) -> Result<Vec<CompletedPart>> {
    let mut done = Vec::new();
    let mut next = Some(first);
    let mut ended = false;
    let mut number = 0;
    while let Some(data) = next.take() {
        number += 1;
        if number > MAX_PARTS {
            bail!(
                "the backup needs more than {MAX_PARTS} parts of {} MiB; raise part-size in the destination",
                parts.size / MIB
            );
        }
        while in_flight.len() >= parts.concurrency {
            done.push(joined(in_flight.join_next().await)?);
        }
        in_flight.spawn(upload_part(Arc::clone(upload), number, data));
        if !ended {
            let (data, last) = read_part(body, &mut carry, parts.size).await?;
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

type Joined = Option<std::result::Result<Result<CompletedPart>, tokio::task::JoinError>>;

fn joined(result: Joined) -> Result<CompletedPart> {
    match result {
        Some(Ok(part)) => part,
        Some(Err(err)) => Err(anyhow!("a part upload panicked or was cancelled: {err}")),
        None => Err(anyhow!("no part upload in flight")),
    }
}

async fn upload_part(upload: Arc<Upload>, number: i32, data: Bytes) -> Result<CompletedPart> {
    let Upload { bucket, key, id } = &*upload;
    let size = data.len();
    // An in-memory body: the SDK can resend it on retry and sends its checksum in a header.
    let mut request = bucket
        .client
        .upload_part()
        .bucket(bucket.name())
        .key(key)
        .upload_id(id)
        .part_number(number)
        .content_length(size as i64)
        .body(ByteStream::from(data));
    if bucket.checksums {
        request = request.checksum_algorithm(ChecksumAlgorithm::Crc32);
    }
    let output = request
        .send()
        .await
        .map_err(|e| anyhow!(explain(&bucket.place, Action::Put, &e)))
        .with_context(|| format!("upload part {number}"))?;
    tracing::debug!(key = %key, part = number, size, "part uploaded");
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(output.e_tag().map(str::to_string))
        .set_checksum_crc32(output.checksum_crc32().map(str::to_string))
        .build())
}

/// How long an abort waits for the parts still uploading. A part that lands
/// after the abort stays, billed, outside any upload (S3 documents the race);
/// past this the parts are cancelled and the abort goes out regardless.
const SETTLE: Duration = Duration::from_secs(30);

/// Lets the parts in flight end, then aborts the upload.
async fn settle_then_abort(
    mut in_flight: InFlight,
    abort: AbortMultipartUploadFluentBuilder,
) -> Result<AbortMultipartUploadOutput, SdkError<AbortMultipartUploadError, HttpResponse>> {
    let settled = async { while in_flight.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(SETTLE, settled).await;
    drop(in_flight);
    abort.send().await
}

/// Aborts the upload if `put` is cancelled midway (a daemon shutting down):
/// best effort, since the runtime may be going away too.
struct AbortOnDrop {
    in_flight: InFlight,
    request: Option<AbortMultipartUploadFluentBuilder>,
}

impl AbortOnDrop {
    /// The put finished, either way: it aborts itself if it must.
    fn disarm(mut self) -> InFlight {
        self.request = None;
        std::mem::take(&mut self.in_flight)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        // No settling here: a shutdown gives the runtime half a second, so the
        // parts are cancelled (dropping `in_flight`) and the abort goes at once.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = request.send().await;
            });
        }
    }
}

/// Aborts the multipart uploads under this virtual cluster's prefix that were
/// started before `cutoff`: the leftovers of agents killed mid-upload.
/// Returns how many were aborted.
pub(super) async fn abort_started_before(bucket: &Bucket, cutoff: DateTime<Utc>) -> Result<usize> {
    let mut aborted = 0;
    let mut key_marker: Option<String> = None;
    let mut upload_marker: Option<String> = None;
    loop {
        let listed = bucket
            .client
            .list_multipart_uploads()
            .bucket(bucket.name())
            .prefix(&bucket.dir)
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
                        destination = %bucket.location(),
                        "the server does not implement ListMultipartUploads, so uploads \
                         left by a killed agent are not cleaned up; add a bucket lifecycle \
                         rule AbortIncompleteMultipartUpload"
                    )
                });
                return Ok(aborted);
            }
            Err(err) => {
                return Err(anyhow!(explain(&bucket.place, Action::ListUploads, &err)))
                    .with_context(|| format!("list unfinished uploads in {}", bucket.location()));
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
            match bucket.abort_multipart_upload(key, id).send().await {
                Ok(_) => {
                    tracing::info!(key = %bucket.url(key), "aborted a stale multipart upload");
                    aborted += 1;
                }
                // Aborted since the listing, by another agent's sweep: nothing left to do.
                Err(err) if err.code() == Some("NoSuchUpload") => {}
                Err(err) => {
                    return Err(anyhow!(explain(&bucket.place, Action::Abort, &err))).with_context(
                        || format!("abort unfinished upload of {}", bucket.url(key)),
                    );
                }
            }
        }
        key_marker = page.next_key_marker().map(str::to_string);
        upload_marker = page.next_upload_id_marker().map(str::to_string);
        if page.is_truncated() != Some(true) || (key_marker.is_none() && upload_marker.is_none()) {
            return Ok(aborted);
        }
    }
}
