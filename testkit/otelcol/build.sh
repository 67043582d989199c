#!/usr/bin/env bash
# Builds the OpenTelemetry Collector of this folder (the tests' real OTLP and
# remote-write client) into TARGET_DIR/otelcol/<key>/otelcol and prints its
# path. <key> is a hash of go.mod, go.sum and main.go, so a build is reused
# until the source changes; Go's module and build caches ($GOPATH, $GOCACHE)
# are kept between runs as usual. scripts/test runs it before the tests, and
# strand_testkit::OtelCollector when the binary is missing.
# Usage: testkit/otelcol/build.sh TARGET_DIR
set -euo pipefail
target=$(realpath -m "${1:?usage: build.sh TARGET_DIR}")
cd "$(dirname "$0")"
key=$(cat go.mod go.sum main.go | sha256sum | cut -c1-16)
out="$target/otelcol/$key/otelcol"
# Go's own installer puts it here without touching PATH.
PATH=$PATH:/usr/local/go/bin
if [[ ! -x $out ]]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: building the OpenTelemetry Collector needs Go 1.26 or newer (go.dev/doc/install)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$out")"
  # -p 2: two packages at a time keep memory in bounds on a small machine.
  # -buildvcs=false: no VCS stamp, so a build needs no git metadata.
  go build -mod=readonly -buildvcs=false -trimpath -p 2 -o "$out.$$" .
  mv -f "$out.$$" "$out"
fi
echo "$out"
