#!/usr/bin/env bash
# apiserver-proxy benchmark: throughput proxied vs direct, connect overhead, failover time.
# Builds the release binary (bench profile) and prints the figures; see benches/apiserver_proxy.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked --bench apiserver_proxy -- "$@"
