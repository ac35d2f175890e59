#!/bin/bash
# Makes a MicroK8s checkout build its cluster-agent from this repository:
#
#   snap/use-in-microk8s.sh MICROK8S_CHECKOUT [REPOSITORY] [REF]
#
# MicroK8s's snapcraft.yaml builds the `cluster-agent` part with
# build-scripts/build-component.sh from build-scripts/components/cluster-agent/ (a
# `repository` to clone, a `version.sh` naming the branch or tag, a `build.sh`). This replaces
# those three files; snapcraft.yaml itself is unchanged. REPOSITORY defaults to this checkout
# (git clones a local path), REF to its current branch.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
checkout="${1:?usage: use-in-microk8s.sh MICROK8S_CHECKOUT [REPOSITORY] [REF]}"
repository="${2:-${here}}"
ref="${3:-$(git -C "${here}" rev-parse --abbrev-ref HEAD)}"
component="${checkout}/build-scripts/components/cluster-agent"

if [ ! -f "${checkout}/snap/snapcraft.yaml" ] || [ ! -d "${component}" ]; then
  echo "${checkout} does not look like a MicroK8s checkout (no snap/snapcraft.yaml or ${component#"${checkout}"/})" >&2
  exit 1
fi
if ! git ls-remote --exit-code "${repository}" "${ref}" >/dev/null; then
  echo "${repository} has no branch or tag ${ref}" >&2
  exit 1
fi

rm -f "${component}"/*
echo "${repository}" > "${component}/repository"
install -m 0755 "${here}/snap/microk8s-component/build.sh" "${component}/build.sh"
sed "s|CLUSTER_AGENT_REF:-main|CLUSTER_AGENT_REF:-${ref}|" \
  "${here}/snap/microk8s-component/version.sh" > "${component}/version.sh"
chmod 0755 "${component}/version.sh"
echo "The cluster-agent part of ${checkout} now builds ${repository} at ${ref}."
