#!/usr/bin/env bash
# Installs what the S3 integration tests (tests/s3.rs) need beyond Rust:
# age and zstd (a backup restored by hand), and a venv with moto 5.2.5 and the
# AWS CLI from PyPI. The tests create the venv themselves when it is missing;
# this script does it ahead of time, e.g. in CI. Idempotent.
set -euo pipefail

venv="${VCBACKUP_VENV:-$HOME/.cache/vcbackup/venv}"

missing=()
for tool in age zstd python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq age zstd python3 python3-venv
fi

# moto 5.2.1's CompleteMultipartUpload reply breaks the AWS SDK: pin 5.2.5.
if ! "$venv/bin/python" -c 'import moto, sys; sys.exit(moto.__version__ != "5.2.5")' 2>/dev/null \
    || [[ ! -x "$venv/bin/aws" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'moto[server]==5.2.5' awscli
fi
echo "test tools ready; venv at $venv"
