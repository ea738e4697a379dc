//! S3Storage against an in-process s3s-fs with SigV4 checked: the storage
//! contract (`conformance`), and what only S3 has.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput,
    CompleteMultipartUploadOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput,
    DeleteObjectInput, DeleteObjectOutput, GetObjectInput, GetObjectOutput,
    ListMultipartUploadsInput, ListMultipartUploadsOutput, ListObjectsV2Input, ListObjectsV2Output,
    MultipartUpload, PutObjectInput, PutObjectOutput, UploadPartInput, UploadPartOutput,
};
use s3s::{S3Request, S3Response, S3Result};

use super::options::{MIB, MIN_PART_SIZE};
use super::*;
use crate::storage::body_channel;
use crate::storage::conformance::Backend;

/// s3s-fs, with what these tests need on top: ListMultipartUploads (from the
/// uploads it saw start, dated by their files, so a test can age them),
/// AWS's NoSuchUpload for an upload that is gone, and the [`Quirks`] of other
/// servers.
struct Server {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    /// Key and ID of every upload started.
    uploads: Mutex<Vec<(String, String)>>,
    quirks: Quirks,
}

/// How a server under test differs from AWS.
#[derive(Debug, Clone, Copy)]
struct Quirks {
    /// Honours If-None-Match; without it, says NotImplemented, as servers
    /// that predate conditional writes do.
    conditional_writes: bool,
    /// Answers NoSuchKey to deleting a missing key, as some S3-compatible
    /// servers do, where AWS answers 204.
    no_such_key_on_delete: bool,
    /// Lists the uploads as a listing taken before any was aborted did: what
    /// an agent sees whose sweep another agent's overtook.
    lists_gone_uploads: bool,
}

const AWS: Quirks = Quirks {
    conditional_writes: true,
    no_such_key_on_delete: false,
    lists_gone_uploads: false,
};

impl Server {
    /// s3s-fs keeps each unfinished upload's owner in this file.
    fn upload_file(&self, id: &str) -> PathBuf {
        self.root.join(format!(".upload-{id}.json"))
    }

    fn refuse_if_none_match<T>(&self, if_none_match: &Option<T>) -> S3Result<()> {
        if if_none_match.is_some() && !self.quirks.conditional_writes {
            return Err(s3s::s3_error!(NotImplemented));
        }
        Ok(())
    }
}

#[async_trait]
impl s3s::S3 for Server {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.refuse_if_none_match(&req.input.if_none_match)?;
        self.fs.put_object(req).await
    }
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.fs.get_object(req).await
    }
    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let path = self.root.join(&req.input.bucket).join(&req.input.key);
        if self.quirks.no_such_key_on_delete && !path.exists() {
            return Err(s3s::s3_error!(NoSuchKey));
        }
        self.fs.delete_object(req).await
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let key = req.input.key.clone();
        let created = self.fs.create_multipart_upload(req).await?;
        if let Some(id) = &created.output.upload_id {
            self.uploads.lock().unwrap().push((key, id.clone()));
        }
        Ok(created)
    }
    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.fs.upload_part(req).await
    }
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.refuse_if_none_match(&req.input.if_none_match)?;
        self.fs.complete_multipart_upload(req).await
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        // s3s-fs says AccessDenied here.
        if !self.upload_file(&req.input.upload_id).exists() {
            return Err(s3s::s3_error!(NoSuchUpload));
        }
        self.fs.abort_multipart_upload(req).await
    }
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let started = self.uploads.lock().unwrap().clone();
        let uploads = started
            .into_iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            // Completed and aborted uploads have no file left.
            .filter_map(|(key, id)| {
                let initiated = match std::fs::metadata(self.upload_file(&id)) {
                    Ok(meta) => meta.modified().ok()?,
                    // Long gone by now, but listed as it was.
                    Err(_) if self.quirks.lists_gone_uploads => SystemTime::UNIX_EPOCH,
                    Err(_) => return None,
                };
                Some(MultipartUpload {
                    key: Some(key),
                    upload_id: Some(id),
                    initiated: Some(initiated.into()),
                    ..Default::default()
                })
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(req.input.bucket),
            prefix: Some(prefix),
            uploads: Some(uploads),
            is_truncated: Some(false),
            ..Default::default()
        }))
    }
}

/// An S3Storage on an in-process s3s-fs, and where that keeps its files.
struct S3sFs {
    storage: S3Storage,
    root: tempfile::TempDir,
}

async fn s3s_fs() -> S3sFs {
    serve(AWS).await
}

/// Serves a fresh s3s-fs with SigV4 checked, and opens `s3://bucket/p` on it
/// with 5 MiB parts.
async fn serve(quirks: Quirks) -> S3sFs {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bucket")).unwrap();
    let server = Server {
        fs: s3s_fs::FileSystem::new(root.path()).unwrap(),
        root: root.path().canonicalize().unwrap(),
        uploads: Mutex::default(),
        quirks,
    };
    let mut service = s3s::service::S3ServiceBuilder::new(server);
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
    let destination = format!("s3://bucket/p?endpoint={endpoint}&force-path-style=true");
    let crate::storage::Destination::S3(parsed) =
        crate::storage::Destination::parse(&destination).unwrap()
    else {
        panic!("{destination} is not an S3 destination");
    };
    let options = S3Options {
        part_size: MIN_PART_SIZE,
        ..parsed
    };
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::from_static("us-east-1"))
        .endpoint_url(&endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "AKIDTEST", "secret", None, None, "test",
        ))
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    let bucket = Bucket::new(client, &options, endpoint, "demo", true);
    S3sFs {
        storage: S3Storage::new(bucket, &options),
        root,
    }
}

#[async_trait]
impl Backend for S3sFs {
    const SCHEME: &'static str = "s3://";

    fn storage(&self) -> &dyn Storage {
        &self.storage
    }

    /// s3s-fs's files of unfinished uploads (`.upload-ID.json`,
    /// `.upload_id-ID.part-N`, metadata) and of unfinished writes (`.tmp.*`).
    async fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("upload") || n.starts_with(".tmp."))
            .collect();
        names.sort();
        names
    }

    /// Starts a multipart upload with one part, dated `age` ago; returns its ID.
    async fn leave_unfinished(&self, key: &str, age: Duration) -> String {
        let bucket = &self.storage.bucket;
        let key = bucket.key(key).unwrap();
        let created = bucket.create_multipart_upload(&key).send().await.unwrap();
        let id = created.upload_id().unwrap().to_string();
        bucket
            .client
            .upload_part()
            .bucket(bucket.name())
            .key(&key)
            .upload_id(&id)
            .part_number(1)
            .body(ByteStream::from_static(b"part"))
            .send()
            .await
            .unwrap();
        let file = self.root.path().join(format!(".upload-{id}.json"));
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
        id
    }
}

mod conformance {
    crate::storage::conformance::storage_conformance!(super::s3s_fs);
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
async fn a_server_without_conditional_writes_is_written_to_without_them() {
    let S3sFs {
        storage,
        root: _root,
    } = serve(Quirks {
        conditional_writes: false,
        ..AWS
    })
    .await;
    storage.put("small", body_of(1000, 1)).await.unwrap();
    assert!(!storage.bucket.conditional_writes());
    storage.put("large", body_of(11 * MIB, 1)).await.unwrap();
    assert_eq!(
        crate::storage::conformance::listed(&storage).await,
        [
            ("large".to_string(), 11 * MIB as u64),
            ("small".to_string(), 1000)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_answers_no_such_key_to_a_delete_has_deleted_it() {
    let backend = serve(Quirks {
        no_such_key_on_delete: true,
        ..AWS
    })
    .await;
    crate::storage::conformance::deleting_what_is_gone_succeeds(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_overtaken_by_another_agents_aborts_nothing_and_succeeds() {
    let backend = serve(Quirks {
        lists_gone_uploads: true,
        ..AWS
    })
    .await;
    let id = backend
        .leave_unfinished("stale", Duration::from_secs(7200))
        .await;
    // The other agent's sweep, after this one listed the upload.
    let bucket = &backend.storage.bucket;
    let key = bucket.key("stale").unwrap();
    bucket
        .abort_multipart_upload(&key, &id)
        .send()
        .await
        .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        backend.storage.abort_stale_uploads(cutoff).await.unwrap(),
        0
    );
    assert!(backend.leftovers().await.is_empty());
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
