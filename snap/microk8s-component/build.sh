#!/bin/bash
# MicroK8s's build-scripts/build-component.sh runs this in a clone of this repository, with
# the part's install directory as $1: it installs $1/bin/cluster-agent.
set -euo pipefail

INSTALL="${1}/bin"
mkdir -p "${INSTALL}"

# The snap's build environment may have no Rust toolchain (or one older than Cargo.toml's
# rust-version): install a minimal one for this build only.
if ! cargo --version >/dev/null 2>&1; then
  export RUSTUP_HOME="${PWD}/.rustup" CARGO_HOME="${PWD}/.cargo"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --no-modify-path
  export PATH="${CARGO_HOME}/bin:${PATH}"
fi

cargo build --release --locked
install -m 0755 target/release/cluster-agent "${INSTALL}/cluster-agent"
