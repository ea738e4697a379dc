//! The fleet view (`vcbackup fleet`, `verify --all-vclusters`): every virtual
//! cluster's storage under one destination, kept apart from the per-cluster
//! storage the agent uses.

use anyhow::{Context, Result, anyhow};

use super::client::Bucket;
use super::explain::{Action, explain};
use super::{S3Options, S3Storage};

impl S3Storage {
    /// Every virtual cluster's storage under the destination's prefix: the
    /// folder names from one delimiter LIST (one request per 1000 names), all
    /// sharing one client and its credentials.
    pub async fn open_all(options: &S3Options) -> Result<Vec<(String, S3Storage)>> {
        // Only the client matters here; this folder is never used.
        let root = Bucket::connect(options, "_").await?;
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
                let bucket = Bucket::new(
                    root.client.clone(),
                    options,
                    root.place.endpoint.clone(),
                    &name,
                    root.checksums,
                );
                (name, S3Storage::new(bucket, options))
            })
            .collect())
    }
}
