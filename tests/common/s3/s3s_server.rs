//! s3s-fs on loopback with SigV4 checked against [`AccessKeys`], one bucket
//! [`BUCKET`].

use std::net::SocketAddr;
use std::sync::Arc;

use super::{AccessKeys, BUCKET, KeysAuth, serve_service};
use crate::common::files_under;

/// s3s-fs ties a multipart upload to the access key that started it; AWS ties
/// it to the principal. Session keys of one role are rewritten to the role's
/// name, so an upload survives a credential refresh as it does on AWS.
struct AsPrincipal {
    fs: s3s_fs::FileSystem,
    keys: Arc<AccessKeys>,
}

macro_rules! delegate {
    ($($op:ident: $input:ident => $output:ident),* $(,)?) => {
        #[async_trait::async_trait]
        impl s3s::S3 for AsPrincipal {
            $(
                async fn $op(
                    &self,
                    mut req: s3s::S3Request<s3s::dto::$input>,
                ) -> s3s::S3Result<s3s::S3Response<s3s::dto::$output>> {
                    if let Some(credentials) = req.credentials.as_mut()
                        && let Some(role) = self.keys.principal(&credentials.access_key)
                    {
                        credentials.access_key = role;
                    }
                    self.fs.$op(req).await
                }
            )*
        }
    };
}

delegate! {
    put_object: PutObjectInput => PutObjectOutput,
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput,
    get_object: GetObjectInput => GetObjectOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
}

/// s3s-fs on 127.0.0.1 with SigV4 checked against `keys`, one bucket `BUCKET`.
pub struct S3sFs {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    pub keys: Arc<AccessKeys>,
}

impl S3sFs {
    pub fn start(keys: Arc<AccessKeys>) -> S3sFs {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(AsPrincipal {
            fs,
            keys: Arc::clone(&keys),
        });
        builder.set_auth(KeysAuth(Arc::clone(&keys)));
        let addr = serve_service(builder.build());
        S3sFs { addr, root, keys }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What s3s-fs keeps of unfinished multipart uploads: `.upload-*` files in its root.
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload"))
            .collect()
    }

    /// Every stored object file under the bucket, as paths relative to it.
    pub fn objects(&self) -> Vec<String> {
        files_under(&self.root.path().join(BUCKET))
    }
}
