#!/usr/bin/env bash
# Prints the folder to use as KUBEBUILDER_ASSETS (envtest's convention: kube-apiserver,
# kube-controller-manager, optionally etcd), or nothing when there is none:
#   - KUBEBUILDER_ASSETS when already set (any envtest asset set, e.g. setup-envtest's);
#   - else the project's shared assets (../shared/envtest/*.xz beside the repository),
#     unpacked once into .tools/envtest with their SHA256SUMS verified.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi
shared=../shared/envtest
[ -f "$shared/SHA256SUMS" ] || exit 0
target=.tools/envtest
if ! (cd "$target" 2>/dev/null && sha256sum --quiet -c "$OLDPWD/$shared/SHA256SUMS" >/dev/null 2>&1); then
  echo "envtest-assets: unpacking $shared into $target" >&2
  rm -rf "$target.part" && mkdir -p "$target.part"
  for f in "$shared"/*.xz; do
    xz -dc "$f" > "$target.part/$(basename "$f" .xz)"
  done
  chmod +x "$target.part"/*
  (cd "$target.part" && sha256sum --quiet -c "$OLDPWD/$shared/SHA256SUMS") >&2
  rm -rf "$target" && mv "$target.part" "$target"
fi
echo "$PWD/$target"
