//! moto's S3 server with IAM authentication on, and the AWS CLI, from a venv.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::REGION;
use crate::common::{free_port, wait_for};

const MOTO: &str = "moto[server]==5.2.5";
const MOTO_VERSION: &str = "5.2.5";

/// The venv holding moto 5.2.5 and the AWS CLI, created on first use.
pub fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = std::env::var_os("VCBACKUP_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/vcbackup/venv")
            });
        let ready = || {
            dir.join("bin/aws").exists()
                && Command::new(dir.join("bin/python"))
                    .args([
                        "-c",
                        &format!(
                            "import moto, sys; sys.exit(moto.__version__ != {MOTO_VERSION:?})"
                        ),
                    ])
                    .status()
                    .is_ok_and(|s| s.success())
        };
        if !ready() {
            let setup = format!(
                "python3 -m venv {0} && {0}/bin/pip install -q '{MOTO}' awscli",
                dir.display()
            );
            let out = Command::new("bash").args(["-c", &setup]).output();
            let ok = out.as_ref().is_ok_and(|o| o.status.success()) && ready();
            assert!(
                ok,
                "could not set up the test venv at {} ({:?}): run `scripts/setup` \
                 (needs python3 with venv and access to PyPI)",
                dir.display(),
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            );
        }
        dir
    })
    .clone()
}

/// moto's server with IAM authentication on: the first six actions create two
/// users, each with a policy and an access key; every request after that is
/// checked against them. `access_key` may do anything with S3 and KMS; `reader`
/// may only list and read, as a role missing s3:PutObject would.
pub struct Moto {
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret: String,
    /// Access key and secret of the read-only user.
    pub reader: (String, String),
    child: Child,
    home: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let venv = venv();
        let port = free_port();
        let home = tempfile::tempdir().unwrap();
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "6")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("moto to listen", Duration::from_secs(60), || {
            std::net::TcpStream::connect(addr).ok()
        });
        let mut moto = Moto {
            addr,
            access_key: String::new(),
            secret: String::new(),
            reader: (String::new(), String::new()),
            child,
            home,
        };
        (moto.access_key, moto.secret) = moto.create_user(
            "vcbackup",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*","kms:*"],"Resource":"*"}]}"#,
        );
        moto.reader = moto.create_user(
            "reader",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:ListBucket","s3:GetObject","kms:Decrypt"],"Resource":"*"}]}"#,
        );
        moto
    }

    /// Three unauthenticated actions: a user, its inline policy, its access key.
    fn create_user(&self, user: &str, policy: &str) -> (String, String) {
        self.aws_unauthenticated(&["iam", "create-user", "--user-name", user]);
        self.aws_unauthenticated(&[
            "iam",
            "put-user-policy",
            "--user-name",
            user,
            "--policy-name",
            "backups",
            "--policy-document",
            policy,
        ]);
        let created = self.aws_unauthenticated(&["iam", "create-access-key", "--user-name", user]);
        let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
        let key = &created["AccessKey"];
        (
            key["AccessKeyId"].as_str().unwrap().into(),
            key["SecretAccessKey"].as_str().unwrap().into(),
        )
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn aws_unauthenticated(&self, args: &[&str]) -> Output {
        aws_cli(
            &self.endpoint(),
            "AKIDUNAUTHENTICATED",
            "unused",
            args,
            self.home.path(),
        )
    }

    /// The AWS CLI as the user that may do anything ([`Moto::access_key`]).
    pub fn aws(&self, args: &[&str]) -> Output {
        aws_cli(
            &self.endpoint(),
            &self.access_key,
            &self.secret,
            args,
            self.home.path(),
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the venv's AWS CLI against `endpoint` with the given credentials, and
/// insists on success.
pub fn aws_cli(
    endpoint: &str,
    access_key: &str,
    secret: &str,
    args: &[&str],
    home: &Path,
) -> Output {
    let config = home.join("aws-config");
    std::fs::write(
        &config,
        format!("[default]\nregion = {REGION}\ns3 =\n  addressing_style = path\n"),
    )
    .unwrap();
    let out = Command::new(venv().join("bin/aws"))
        .args(args)
        .args(["--endpoint-url", endpoint, "--output", "json"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run the AWS CLI");
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
