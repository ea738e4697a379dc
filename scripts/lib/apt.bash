# shellcheck shell=bash
# Debian packages for the scripts, sourced (not run):
#   apt_install_missing PACKAGE...   installs with the machine's apt what is not installed yet;
#   private_apt DIR ARCH SUITE...    an apt configuration of its own in DIR, for another
#                                    architecture or suite, leaving the machine's sources,
#                                    lists and dpkg status as they are; sets private_apt_opts.
# Only Debian's own mirrors, as the machine's apt configuration names them, are used.

# sudo when not root; apt's downloads unsandboxed when root (the caches live under $HOME,
# which apt's _apt user cannot write).
apt_sudo=()
apt_sandbox=()
if [ "$(id -u)" = 0 ]; then apt_sandbox=(-o APT::Sandbox::User=root); else apt_sudo=(sudo); fi

apt_install_missing() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "apt: installing ${missing[*]}" >&2
  "${apt_sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { echo "apt: could not install ${missing[*]}" >&2; return 1; }
}

# The Debian archives the machine's apt is configured with, as "URI SUITE COMPONENT" lines
# (from `apt-get indextargets`, which needs no downloaded lists).
apt_machine_repos() {
  # shellcheck disable=SC2016  # apt's own $(FIELD) placeholders
  apt-get indextargets --format '$(TARGET_OF) $(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null |
    awk '$1 == "deb" { print $2, $3, $4 }' | sort -u
}

# private_apt DIR ARCH SUITE...: sources for SUITE... (each from the machine's mirror of that
# suite, or, for a suite the machine has not configured such as a backports suite of another
# release, from the mirror of the machine's own release), for ARCH only; lists, caches and
# dpkg status in DIR. Sets private_apt_opts for apt-get and apt-cache.
private_apt() {
  local dir=$1 arch=$2 suite uri codename keyring=/usr/share/keyrings/debian-archive-keyring.gpg repos
  shift 2
  codename=$(sed -n 's/^VERSION_CODENAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)
  [ -f "$keyring" ] || { echo "apt: no $keyring (package debian-archive-keyring)" >&2; return 1; }
  repos=$(apt_machine_repos)
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
  [ -e "$dir/status" ] || : >"$dir/status"
  {
    for suite in "$@"; do
      uri=$(awk -v s="$suite" '$2 == s { print $1; exit }' <<<"$repos")
      [ -n "$uri" ] || uri=$(awk -v s="$codename" '$2 == s { print $1; exit }' <<<"$repos")
      [ -n "$uri" ] || { echo "apt: the machine's apt configuration has no Debian archive for $codename" >&2; return 1; }
      printf 'deb [arch=%s signed-by=%s] %s %s main\n' "$arch" "$keyring" "$uri" "$suite"
    done
  } >"$dir/sources.list.new"
  mv "$dir/sources.list.new" "$dir/sources.list"
  private_apt_dir=$dir
  private_apt_opts=(-o Dir::Etc::sourcelist="$dir/sources.list" -o Dir::Etc::sourceparts=-
    -o Dir::State::Lists="$dir/lists" -o Dir::State::status="$dir/status" -o Dir::Cache="$dir/cache"
    -o APT::Architecture="$arch" -o APT::Architectures="$arch" "${apt_sandbox[@]}")
}

# private_apt_update: fetches the lists of the configuration private_apt set up.
private_apt_update() {
  local log=$private_apt_dir/update.log
  apt-get -q "${private_apt_opts[@]}" update >"$log" 2>&1 || {
    echo "apt: apt-get update failed for $(tr '\n' ';' <"$private_apt_dir/sources.list") (log: $log)" >&2
    grep '^[EW]:' "$log" >&2 || true
    return 1
  }
}

# The Dockerfile's compiler settings for the builder (its `ENV CC_…` lines), as VAR=VALUE lines.
dockerfile_toolchain_env() {
  sed -n '/^ENV CC_/,/[^\\]$/p' "$1" | grep -o '[A-Za-z0-9_]*=[^ \\]*'
}
