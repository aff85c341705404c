#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (Apache-2.0; an S3-compatible object store in one binary) from its Go module, for the
# remote-store tests (test/e2e/remote-store.test.ts), and prints the binary's path on its last line.
#
# Why SeaweedFS: a real, widely deployed S3 server (multipart uploads, ranged GETs, signature v4, per-identity
# read/write rights) that the Go module proxy serves; MinIO is AGPL, and the S3 servers on PyPI are mocks.
# `go install …/weed@v` refuses a module whose go.mod has replace directives, so this builds inside the module's own
# folder (where they apply). Cached by version under $NXFT_WEED_CACHE (default ~/.cache/nx-finetune/seaweedfs), so a
# CI cache step can keep it. From scratch (modules downloaded) the build took 288 s on 2 idle cores, 30 min with
# four other builds on them; with Go's build cache warm, 51 s.
set -euo pipefail
VERSION=v0.0.0-20261109003541-7506e5f91cd6
CACHE=${NXFT_WEED_CACHE:-$HOME/.cache/nx-finetune/seaweedfs}
BIN="$CACHE/$VERSION/weed"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
GO=$(command -v go || echo /usr/local/go/bin/go)
[ -x "$GO" ] || { echo "install-seaweedfs: no Go toolchain (go or /usr/local/go/bin/go)" >&2; exit 1; }
export GOFLAGS=-mod=readonly
dir=$("$GO" mod download -json "github.com/seaweedfs/seaweedfs@$VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "install-seaweedfs: go mod download gave no folder for seaweedfs@$VERSION" >&2; exit 1; }
mkdir -p "$CACHE/$VERSION"
echo "install-seaweedfs: building weed $VERSION (once; cached in $CACHE)" >&2
start=$(date +%s)
(cd "$dir" && nice "$GO" build -o "$BIN.tmp" ./weed) >&2
mv "$BIN.tmp" "$BIN"
echo "install-seaweedfs: built in $(( $(date +%s) - start )) s" >&2
echo "$BIN"
