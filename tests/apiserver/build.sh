#!/usr/bin/env bash
# Build real kube-apiserver, kube-controller-manager, kubectl, etcd and the
# node's kubelet, kube-scheduler and kube-proxy (tests/node) from the Go module
# proxy into $LOGSTREAM_CACHE/k8s-<version>/bin (default cache dir:
# $HOME/.cache/logstream). Idempotent: binaries already present are skipped.
# The bin dir is printed on the last line of stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD="$HERE/go"
CACHE="${LOGSTREAM_CACHE:-$HOME/.cache/logstream}"

# Versions come from the committed go.mod files (single source of truth).
modver() { awk -v m="$1" '{ sub(/^require[ \t]+/, "") } $1 == m && $2 ~ /^v/ { print $2; exit }' "$2"; }
K8S_VERSION="$(modver k8s.io/kubernetes "$MOD/go.mod")"
ETCD_VERSION="$(modver go.etcd.io/etcd/server/v3 "$MOD/etcd/go.mod")"
[[ -n "$K8S_VERSION" && -n "$ETCD_VERSION" ]] || { echo "cannot read versions from go.mod" >&2; exit 1; }

BIN="$CACHE/k8s-$K8S_VERSION/bin"
mkdir -p "$BIN"

export GOMODCACHE="$CACHE/gomod"
export GOCACHE="$CACHE/gocache"
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0 # upstream builds these as static binaries

# Build into a temp dir inside BIN, then rename, so an interrupted build never
# leaves a half-written binary that a rerun would mistake for a finished one.
TMP="$(mktemp -d "$BIN/.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

k8s_pkgs=()
for b in kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy; do
  [[ -x "$BIN/$b" ]] || k8s_pkgs+=("./cmd/$b")
done

if ((${#k8s_pkgs[@]})); then
  # Same version stamping and tags as upstream hack/lib/{golang,version}.sh.
  # buildDate is the proxy's timestamp of the tag, so the build is reproducible.
  # `go mod download -json` has no "Time"; it is in the .info file "Info" names.
  info="$(cd "$MOD" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"Info": "\(.*\)",\{0,1\}$/\1/p')"
  build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info" 2>/dev/null || true)"
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  ldflags="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${build_date:-1970-01-01T00:00:00Z}"
  done
  echo "building ${k8s_pkgs[*]} (k8s.io/kubernetes $K8S_VERSION) ..." >&2
  (cd "$MOD" && nice -n 10 go build -trimpath -tags=selinux,notest,grpcnotrace \
    -ldflags="$ldflags" -o "$TMP/" "${k8s_pkgs[@]}")
  for p in "${k8s_pkgs[@]}"; do mv -f "$TMP/${p##*/}" "$BIN/"; done
fi

if [[ ! -x "$BIN/etcd" ]]; then
  echo "building etcd (go.etcd.io/etcd/server/v3 $ETCD_VERSION) ..." >&2
  (cd "$MOD/etcd" && nice -n 10 go build -trimpath -ldflags="-s -w" -o "$TMP/etcd" .)
  mv -f "$TMP/etcd" "$BIN/etcd"
fi

echo "$BIN"
