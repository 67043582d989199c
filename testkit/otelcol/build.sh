#!/usr/bin/env bash
# Builds the OpenTelemetry Collector of this folder (the tests' real OTLP and
# remote-write client) into TARGET_DIR/otelcol/<key>/otelcol, cached by
# source hash (see scripts/go-build), and prints its path. scripts/test runs
# it before the tests, and strand_testkit::OtelCollector when the binary is
# missing.
# Usage: testkit/otelcol/build.sh TARGET_DIR
set -euo pipefail
here=$(dirname "$0")
exec "$here/../../scripts/go-build" "$here" otelcol . "${1:?usage: build.sh TARGET_DIR}"
