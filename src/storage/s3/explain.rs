//! SDK errors in words an operator can act on: which IAM permission an
//! AccessDenied lacks and on which resource, a wrong region or key, an
//! unreachable server.

use std::error::Error as StdError;
use std::io;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error_chain;

/// What messages about this storage name: the bucket, the configured prefix, the server.
#[derive(Debug)]
pub(super) struct Place {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: String,
}

/// What a request was for: says which permission an AccessDenied lacks.
#[derive(Debug, Clone, Copy)]
pub(super) enum Action {
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
pub(super) fn explain<E>(place: &Place, action: Action, err: &SdkError<E, HttpResponse>) -> String
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
    match error_chain::flatten(err, &GENERIC) {
        flat if flat.is_empty() => DisplayErrorContext(err).to_string(),
        flat => flat,
    }
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
