#!/usr/bin/env bash
# Builds Jaeger v2 (the all-in-one `jaeger` of github.com/jaegertracing/jaeger,
# pinned as a tool in go.mod) into TARGET_DIR/jaeger/<key>/jaeger and prints
# its path. `strand-bench compare-traces` runs it to ingest the same
# OTLP load as Strand. <key> is a hash of go.mod and go.sum, so a build is
# reused until the pinned version changes; Go's module and build caches
# ($GOPATH, $GOCACHE) are kept between runs as usual.
# Usage: bench/jaeger/build.sh TARGET_DIR
set -euo pipefail
target=$(realpath -m "${1:?usage: build.sh TARGET_DIR}")
cd "$(dirname "$0")"
key=$(cat go.mod go.sum | sha256sum | cut -c1-16)
out="$target/jaeger/$key/jaeger"
# Go's own installer puts it here without touching PATH.
PATH=$PATH:/usr/local/go/bin
if [[ ! -x $out ]]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: building Jaeger v2 needs Go 1.26 or newer (go.dev/doc/install)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$out")"
  # -p 2: two packages at a time keep memory in bounds on a small machine.
  # -buildvcs=false: no VCS stamp, so a build needs no git metadata.
  go build -mod=readonly -buildvcs=false -trimpath -p 2 -o "$out.$$" github.com/jaegertracing/jaeger/cmd/jaeger
  mv -f "$out.$$" "$out"
fi
echo "$out"
