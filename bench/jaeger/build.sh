#!/usr/bin/env bash
# Builds Jaeger v2 (the all-in-one `jaeger` of github.com/jaegertracing/jaeger,
# pinned as a tool in go.mod) into TARGET_DIR/jaeger/<key>/jaeger, cached by
# source hash (see scripts/go-build), and prints its path.
# `strand-bench compare-traces` runs it to ingest the same OTLP load as
# Strand; scripts/test runs it before the tests.
# Usage: bench/jaeger/build.sh TARGET_DIR
set -euo pipefail
here=$(dirname "$0")
exec "$here/../../scripts/go-build" "$here" jaeger github.com/jaegertracing/jaeger/cmd/jaeger "${1:?usage: build.sh TARGET_DIR}"
