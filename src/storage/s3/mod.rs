//! An S3 bucket or an S3-compatible server (MinIO, Ceph): `s3://BUCKET/PREFIX?options`.
//!
//! Small objects go up in one PUT, larger ones as multipart uploads
//! (`multipart`); either way an object appears whole or not at all, and never
//! replaces another (`If-None-Match`, where the server has it). `options`
//! parses the destination, `client` builds the SDK client and the requests
//! writes share, `explain` turns SDK errors into IAM hints.

mod client;
mod explain;
mod fleet;
mod multipart;
mod options;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use chrono::{DateTime, Utc};

use self::client::{Bucket, to_chrono};
use self::explain::{Action, explain};
use self::multipart::{Parts, read_part};
pub use self::options::S3Options;
use super::{Body, ObjectInfo, ObjectNotFound, ObjectReader, Storage, is_object_name};

/// The objects of one virtual cluster under `s3://bucket/prefix/<vcluster>/`.
pub struct S3Storage {
    bucket: Arc<Bucket>,
    parts: Parts,
}

impl S3Storage {
    pub async fn open(options: &S3Options, vcluster: &str) -> Result<Self> {
        let bucket = Bucket::connect(options, vcluster).await?;
        Ok(S3Storage::new(bucket, options))
    }

    fn new(bucket: Bucket, options: &S3Options) -> Self {
        S3Storage {
            bucket: Arc::new(bucket),
            parts: Parts {
                size: options.part_size,
                concurrency: options.concurrency,
            },
        }
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn location(&self) -> String {
        self.bucket.location()
    }

    async fn put(&self, key: &str, mut body: Body) -> Result<()> {
        let key = self.bucket.key(key)?;
        let mut carry = None;
        let (first, last) = read_part(&mut body, &mut carry, self.parts.size).await?;
        if last {
            self.bucket.put_object(&key, first).await
        } else {
            multipart::put(&self.bucket, self.parts, &key, first, carry, &mut body).await
        }
    }

    async fn get(&self, key: &str) -> Result<ObjectReader> {
        let full = self.bucket.key(key)?;
        let response = self
            .bucket
            .client
            .get_object()
            .bucket(self.bucket.name())
            .key(&full)
            .send()
            .await;
        match response {
            Ok(output) => Ok(Box::pin(output.body.into_async_read())),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                Err(ObjectNotFound::error(self, key))
            }
            Err(err) => Err(anyhow!(explain(&self.bucket.place, Action::Get, &err)))
                .with_context(|| format!("read {}", self.bucket.url(&full))),
        }
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>> {
        let dir = &self.bucket.dir;
        let mut pages = self
            .bucket
            .client
            .list_objects_v2()
            .bucket(self.bucket.name())
            .prefix(dir)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| anyhow!(explain(&self.bucket.place, Action::List, &e)))
                .with_context(|| format!("list {}", self.location()))?;
            for object in page.contents() {
                // Our own objects only: nothing nested, nothing hidden.
                let Some(key) = object.key().and_then(|k| k.strip_prefix(dir.as_str())) else {
                    continue;
                };
                if !is_object_name(key) {
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
        let full = self.bucket.key(key)?;
        let response = self
            .bucket
            .client
            .delete_object()
            .bucket(self.bucket.name())
            .key(&full)
            .send()
            .await;
        match response {
            Ok(_) => Ok(()),
            // Already gone (another agent's retention): AWS answers 204 then,
            // some S3-compatible servers NoSuchKey.
            Err(err) if err.code() == Some("NoSuchKey") => Ok(()),
            Err(err) => Err(anyhow!(explain(&self.bucket.place, Action::Delete, &err)))
                .with_context(|| format!("delete {}", self.bucket.url(&full))),
        }
    }

    /// Aborts the multipart uploads under this virtual cluster's prefix that
    /// were started before `cutoff`.
    async fn abort_stale_uploads(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        multipart::abort_started_before(&self.bucket, cutoff).await
    }
}
