#!/usr/bin/env bash
# Rebuild the training photo set (see README.md) from Debian archive packages.
#
# usage: bash benchmarks/training_photos/recipe.sh OUT_DIR WORK_DIR
#   OUT_DIR   gets shard-NN/*.webp (lossless, 8-bit RGB, each shard <= 60 MiB), MANIFEST.tsv and
#             EXCLUDED.tsv (every source left out, with the reason)
#   WORK_DIR  private apt state, .deb files (~1.1 GB) and unpacked packages (~2.5 GB)
#   env PYTHON  interpreter with Pillow (WebP) and numpy (default: python3)
#   env JOBS    worker processes (default 2)
#   env STRICT=1  stop when a pinned version is no longer served (default: warn, take the
#                 archive's current version, and let the manifest comparison show the drift)
# Needs: Debian's apt-get, dpkg-deb, tar and the Debian archive keyring; reaches deb.debian.org.
# Both paths should be outside the repository (or ignored by git).
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(realpath -m "$1")
WORK=$(realpath -m "$2")
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
"$PYTHON" -c 'import numpy; from PIL import features; assert features.check("webp")' ||
  { echo "need Pillow with WebP and numpy for $PYTHON (set PYTHON=...)" >&2; exit 1; }
[ -r "$KEYRING" ] || { echo "missing $KEYRING (apt-get install debian-archive-keyring)" >&2; exit 1; }

# Deny list: reserved for evaluation, never downloaded (kodim* files are never extracted either).
DENY_RE=$("$PYTHON" -c "import sys; sys.path.insert(0, '$HERE'); import spec; print(spec.DENY_PACKAGE_RE)")
DENY_KODAK=$("$PYTHON" -c "import sys; sys.path.insert(0, '$HERE'); import spec; print(' '.join(spec.DENY_PACKAGES_SHIPPING_KODAK))")
refuse() {  # refuse PKG: exit if the package is on the deny list
  if [[ "$1" =~ $DENY_RE ]] || [[ " $DENY_KODAK " == *" $1 "* ]]; then
    echo "refused: $1 is reserved for evaluation" >&2; exit 1
  fi
}

. "$HERE/apt.sh"  # apt_opts SUITE
mkdir -p "$WORK/debs" "$WORK/unpack" "$OUT"
"$PYTHON" -c "import sys; sys.path.insert(0, '$HERE'); import spec
for p, (suite, v) in spec.PACKAGES.items(): print(p, suite, v)" > "$WORK/packages.txt"
for suite in $(awk '{print $2}' "$WORK/packages.txt" | sort -u); do
  d="$WORK/apt-$suite"; mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian $suite main" > "$d/sources.list"
  # shellcheck disable=SC2046
  apt-get $(apt_opts "$suite") update -qq
done

: > "$WORK/versions.tsv"
while read -r pkg suite ver; do
  refuse "$pkg"
  deb=$(fetch_deb "$pkg" "$suite" "$ver")
  ver=$(dpkg-deb -f "$deb" Version)
  if [ ! -d "$WORK/unpack/$pkg" ]; then
    mkdir -p "$WORK/unpack/$pkg.tmp"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$WORK/unpack/$pkg.tmp" --exclude='*[kK][oO][dD][iI][mM]*'
    mv "$WORK/unpack/$pkg.tmp" "$WORK/unpack/$pkg"
  fi
  printf '%s\t%s\n' "$pkg" "$ver" >> "$WORK/versions.tsv"
done < "$WORK/packages.txt"

rm -rf "$OUT"/shard-* "$OUT/_staging"
start=$(date +%s)
(cd "$HERE" && nice -n 19 "$PYTHON" build.py build "$WORK/unpack" "$WORK/versions.tsv" "$OUT" "$JOBS")
echo "build: $(( $(date +%s) - start )) s"

# Pixels must match the committed manifest (other Pillow/libjpeg versions may differ slightly).
"$PYTHON" "$HERE/compare_manifest.py" "$HERE/MANIFEST.tsv" "$OUT/MANIFEST.tsv"
du -sh "$OUT"/shard-* | tr '\n' ' '; echo
