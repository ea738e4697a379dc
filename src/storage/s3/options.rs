//! The options of an `s3://BUCKET/PREFIX?option=value&…` destination: parsed
//! and checked once, when the destination is given, and written back for messages.

use std::fmt;

use anyhow::{Result, anyhow};

pub(super) const MIB: usize = 1 << 20;
/// 8 MiB keeps a 1 GiB backup under 64 MiB of memory (scripts/bench) and
/// still allows objects of 78 GiB in 10,000 parts.
const DEFAULT_PART_SIZE: usize = 8 * MIB;
/// S3's minimum for every part but the last.
pub(super) const MIN_PART_SIZE: usize = 5 * MIB;
/// Parts are held in memory; beyond this a sidecar's memory limit is at risk.
const MAX_PART_SIZE: usize = 512 * MIB;
const DEFAULT_CONCURRENCY: usize = 2;
const MAX_CONCURRENCY: usize = 32;

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
        // By hand rather than a serde struct: serde_urlencoded says "unknown
        // field" and reports a bad number without naming its option, and every
        // value here needs its own check and message anyway.
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

/// `8388608`, `8MiB`, `8M`, `512KiB`, `1GiB`. Every unit is binary, as in the
/// AWS CLI's `multipart_chunksize`: a size crate (bytesize) reads `5MB` as
/// 5,000,000 bytes, below S3's minimum part, so `part-size=5MB` would stop working.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Destination;

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
}
