#!/usr/bin/env bash
# Usage: images.sh OUT_DIR
# Builds the images the one-node cluster of tests/node runs, without any
# registry, as OCI archives in OUT_DIR (one per image), and prints their paths:
#
#   ghcr.io/logstream-dev/logstream:dev           sidecar/Dockerfile's final stage
#   ghcr.io/logstream-dev/logstream-operator:dev  operator/Dockerfile's final stage
#   docker.io/library/busybox:1.36                Debian's static busybox (examples/demo-app.yaml)
#   registry.k8s.io/pause:3.10                    tests/node/pause.c (the pod sandbox)
#   docker.io/library/traefik:<version>           Traefik (MIT), the node's ingress controller,
#                                                 built from the Go module proxy (tests/node/traefik)
#   docker.io/coredns/coredns:<version>           CoreDNS (Apache-2.0), the node's cluster DNS,
#                                                 built from the Go module proxy (tests/node/coredns)
#
# The two project images come from the same static musl binaries that
# tests/tests/static_binaries.rs builds (same command, same target dir), and
# from the final stage of each Dockerfile taken verbatim (everything from its
# last `FROM scratch`), with only `COPY --from=build /out/X` turned into a
# copy of the binary from the build context: one definition of the image, not
# two that can drift. The demo app is `logstream demo-writer` in the logstream
# image, or busybox as in examples/.
#
# Cached: an archive is rebuilt only when its inputs (binary, stage text)
# change; buildah's storage lives under $LOGSTREAM_CACHE/buildah.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/node"
CACHE="${LOGSTREAM_CACHE:-$HOME/.cache/logstream}"
OUT="$1"
TAG="dev"
TARGET="x86_64-unknown-linux-musl"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

for tool in buildah gcc go; do
  command -v "$tool" >/dev/null || { echo "$tool not found: run .ci/install-tools" >&2; exit 1; }
done
[[ -x /bin/busybox ]] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' ||
  { echo "static /bin/busybox not found (Debian busybox-static): run .ci/install-tools" >&2; exit 1; }

# --- the static binaries, exactly as static_binaries.rs builds them ----------
MUSL_TARGET_DIR="$CACHE/musl-target"
echo "images: cargo build --release --target $TARGET (logstream, logstream-operator, kubectl-logstream)" >&2
# A clean environment, as static_binaries.rs uses: what a test process adds
# (LD_LIBRARY_PATH, CARGO_PKG_*, ...) would otherwise make cargo rebuild the
# whole tree each time the other one built it.
# rustup puts its toolchain's bin dir first on PATH (and sets CARGO_HOME and
# RUSTUP_HOME) for the processes it starts, and callers add their own dirs:
# PATH is one fixed list (cargo's bin dir, then the system's), the same in
# static_binaries.rs.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
(cd "$ROOT" && env -i PATH="$cargo_home/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME="$HOME" \
  CARGO_HOME="$cargo_home" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" \
  CARGO_TARGET_DIR="$MUSL_TARGET_DIR" CARGO_PROFILE_RELEASE_STRIP=debuginfo ${CARGO_LOG:+CARGO_LOG="$CARGO_LOG"} \
  nice -n 10 cargo build --quiet --release --locked --target "$TARGET" \
  -p logstream -p logstream-operator -p kubectl-logstream)
REL="$MUSL_TARGET_DIR/$TARGET/release"

BD="$CACHE/buildah"
B=(buildah --root "$BD/root" --runroot "$BD/run" --storage-driver vfs)
mkdir -p "$BD"

# One image: NAME (archive), REF, CONTEXT_DIR, DOCKERFILE_TEXT. Skipped when
# the archive exists and the hash of its inputs is unchanged.
image() {
  local name=$1 ref=$2 ctx=$3 text=$4
  local stamp="$OUT/$name.inputs" archive="$OUT/$name.tar" sum
  sum="$( { printf '%s\n%s\n' "$ref" "$text"; (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum); } | sha256sum | cut -d' ' -f1)"
  if [[ -f "$archive" && "$(cat "$stamp" 2>/dev/null)" == "$sum" ]]; then
    echo "$archive"
    return
  fi
  printf '%s\n' "$text" >"$ctx/Containerfile"
  "${B[@]}" bud --quiet --layers=false --format oci -f "$ctx/Containerfile" -t "$ref" "$ctx" >/dev/null
  rm -f "$archive"
  "${B[@]}" push --quiet "$ref" "oci-archive:$archive:$ref" >/dev/null
  "${B[@]}" rmi "$ref" >/dev/null 2>&1 || true
  echo "$sum" >"$stamp"
  echo "$archive"
}

# The final stage of a Dockerfile, with the binary copied from the context.
final_stage() { # DOCKERFILE
  awk '/^FROM scratch/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$1" |
    sed 's#^COPY --from=binaries /out/\([^ ]*\) #COPY \1 #'
}

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

for bin in logstream logstream-operator; do
  case $bin in
  logstream) df="$ROOT/sidecar/Dockerfile" ;;
  logstream-operator) df="$ROOT/operator/Dockerfile" ;;
  esac
  text="$(final_stage "$df")"
  grep -q "^COPY $bin /$bin" <<<"$text" ||
    { echo "$df: final stage does not copy /out/$bin as expected:" >&2; echo "$text" >&2; exit 1; }
  mkdir -p "$stage/$bin"
  install -m 0755 "$REL/$bin" "$stage/$bin/$bin"
  image "$bin" "ghcr.io/logstream-dev/$bin:$TAG" "$stage/$bin" "$text"
done

mkdir -p "$stage/busybox/bin" "$stage/busybox/tmp"
chmod 1777 "$stage/busybox/tmp"
install -m 0755 /bin/busybox "$stage/busybox/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ $applet == busybox ]] || ln -s busybox "$stage/busybox/bin/$applet"
done
image busybox docker.io/library/busybox:1.36 "$stage/busybox" \
  "$(printf '%s\n' 'FROM scratch' 'COPY . /' 'CMD ["sh"]')"

mkdir -p "$stage/pause"
gcc -static -Os -s -o "$stage/pause/pause" "$HERE/pause.c"
image pause registry.k8s.io/pause:3.10 "$stage/pause" \
  "$(printf '%s\n' 'FROM scratch' 'COPY pause /pause' 'USER 65535:65535' 'ENTRYPOINT ["/pause"]')"

# --- cluster add-ons built from the Go module proxy -----------------------------
# go_image NAME MODULE PACKAGE REF_PREFIX [LDFLAGS]: the Go program PACKAGE of
# MODULE, at the version tests/node/NAME/go.mod pins (its `tool` line), built
# once into $CACHE/NAME-<version>/ with the Go caches of
# tests/apiserver/build.sh, alone on scratch as REF_PREFIX<version>, uid 65532.
go_image() {
  local name=$1 module=$2 pkg=$3 ref=$4 ldflags=${5:-} mod="$HERE/$1" version bin
  version="$(awk -v m="$module" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod/go.mod")"
  [[ -n "$version" ]] || { echo "cannot read $module's version from $mod/go.mod" >&2; exit 1; }
  bin="$CACHE/$name-$version/$name"
  if [[ ! -x "$bin" ]]; then
    echo "images: building $name $version from the Go module proxy ..." >&2
    mkdir -p "${bin%/*}"
    (cd "$mod" && GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gocache" \
      GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 nice -n 10 go build -trimpath \
      -ldflags="-s -w ${ldflags//@VERSION@/$version}" -o "$bin.tmp" "$pkg")
    mv -f "$bin.tmp" "$bin"
  fi
  mkdir -p "$stage/$name"
  install -m 0755 "$bin" "$stage/$name/$name"
  image "$name" "$ref${version#v}" "$stage/$name" \
    "$(printf '%s\n' 'FROM scratch' "COPY $name /$name" 'USER 65532:65532' "ENTRYPOINT [\"/$name\"]")"
}

# Traefik (MIT), the ingress controller (tests/node/traefik.yaml).
go_image traefik github.com/traefik/traefik/v3 github.com/traefik/traefik/v3/cmd/traefik \
  docker.io/library/traefik:v -X=github.com/traefik/traefik/v3/pkg/version.Version=@VERSION@
# CoreDNS (Apache-2.0), the cluster DNS (tests/node/coredns.yaml).
go_image coredns github.com/coredns/coredns github.com/coredns/coredns docker.io/coredns/coredns:
