#!/bin/bash
# The branch or tag of the repository to build (build-component.sh clones it with -b).
echo "${CLUSTER_AGENT_REF:-main}"
