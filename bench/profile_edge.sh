#!/bin/sh
# Profile one edge worker with py-spy while wrk drives the small scenario.
#
# Starts a private upstream nginx and Redis, runs the edge with EDGE_WORKERS=1 pinned to
# CPU 1, finds the worker process under the supervisor and records it twice:
#   bench/out/profile.svg      flame graph
#   bench/out/profile.txt      collapsed stacks (py-spy --format raw)
#   bench/out/profile-top.txt  top functions by own and inclusive time
#   bench/out/profile-dump.txt one py-spy dump of the worker under load
#
# Usage: bench/profile_edge.sh [--duration SECONDS] [--edge-cmd CMD] [--edge-env K=V ...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python3}" "$here/run.py" --profile "$@"
