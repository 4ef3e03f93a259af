#!/usr/bin/env bash
# Rebuild the EXTRA training photographs (see README.md): an addition to
# benchmarks/training_photos, from Debian packages that set does not use (plus the new pictures
# of newer versions of two packages it does use).
#
# usage: EXISTING=DIR bash benchmarks/data/photos2/recipe.sh OUT_DIR WORK_DIR
#   EXISTING  a built training_photos set (its shard-*/*.webp): needed for the dedupe. Build it with
#             bash benchmarks/training_photos/recipe.sh /work/data/photos2 /work/data/photos2-work
#   OUT_DIR   gets train/*.webp, heldout/*.webp (lossless, 8-bit RGB), MANIFEST.tsv, EXCLUDED.tsv
#   WORK_DIR  private apt state, .deb files (~1.4 GB) and unpacked packages (~1.6 GB)
#   env PYTHON  interpreter with Pillow (WebP) and numpy (default: python3)
#   env JOBS    worker processes (default 2)
#   env STRICT=1  stop when a pinned version is no longer served (default: warn, take the
#                 archive's current version, and let the manifest comparison show the drift)
# Needs Debian's apt-get, dpkg-deb, tar and the archive keyring; reaches deb.debian.org. Nothing is
# installed: packages are fetched with apt-get download and unpacked with dpkg-deb | tar.
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,18p' "$0" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(realpath -m "$1")
WORK=$(realpath -m "$2")
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}
STRICT=${STRICT:-0}
EXISTING=${EXISTING:-}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -n "$EXISTING" ] && ls "$EXISTING"/shard-*/*.webp >/dev/null 2>&1 ||
  { echo "set EXISTING to a built training_photos set (see the usage above)" >&2; exit 1; }
"$PYTHON" -c 'import numpy; from PIL import features; assert features.check("webp")' ||
  { echo "need Pillow with WebP and numpy for $PYTHON (set PYTHON=...)" >&2; exit 1; }
[ -r "$KEYRING" ] || { echo "missing $KEYRING (apt-get install debian-archive-keyring)" >&2; exit 1; }

spec() {  # spec CODE: run CODE with spec_extra imported as s
  "$PYTHON" -c "import sys
sys.path.insert(0, '$HERE')
import spec_extra as s
$1"
}
DENY_RE=$(spec 'print(s.DENY_PACKAGE_RE)')
mkdir -p "$WORK/debs" "$WORK/unpack" "$OUT"
spec 'for p, (su, v) in s.PACKAGES.items(): print(p, su, v, s.EXTRACT_ONLY.get(p, "-"))' > "$WORK/packages.txt"

. "$HERE/../../training_photos/apt.sh"  # apt_opts SUITE
for suite in $(awk '{print $2}' "$WORK/packages.txt" | sort -u); do
  d="$WORK/apt-$suite"; mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  if [ "$suite" = bookworm ]; then
    { echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian bookworm main"
      echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian bookworm-updates main"
      echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian-security bookworm-security main"
    } > "$d/sources.list"
  else
    echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian $suite main" > "$d/sources.list"
  fi
  # shellcheck disable=SC2046
  apt-get $(apt_opts "$suite") update -qq
done

: > "$WORK/versions.tsv"
while read -r pkg suite ver only; do
  if [[ "$pkg" =~ $DENY_RE ]]; then echo "refused: $pkg is reserved for evaluation" >&2; exit 1; fi
  deb=$(fetch_deb "$pkg" "$suite" "$ver")
  got=$(dpkg-deb -f "$deb" Version)
  stamp="$WORK/unpack/.$pkg.version"
  if [ ! -d "$WORK/unpack/$pkg" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$got" ]; then
    rm -rf "$WORK/unpack/$pkg" "$WORK/unpack/$pkg.tmp"
    mkdir -p "$WORK/unpack/$pkg.tmp"
    if [ "$only" = - ]; then
      dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$WORK/unpack/$pkg.tmp" --exclude='*[kK][oO][dD][iI][mM]*'
    else  # big packages: only the folder we use
      dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$WORK/unpack/$pkg.tmp" --wildcards "$only" \
        --exclude='*[kK][oO][dD][iI][mM]*'
    fi
    mv "$WORK/unpack/$pkg.tmp" "$WORK/unpack/$pkg"
    echo "$got" > "$stamp"
  fi
  printf '%s\t%s\n' "$pkg" "$got" >> "$WORK/versions.tsv"
done < "$WORK/packages.txt"

rm -rf "$OUT/train" "$OUT/heldout"
start=$(date +%s)
(cd "$HERE" && nice -n 19 "$PYTHON" build_extra.py build "$WORK/unpack" "$WORK/versions.tsv" "$EXISTING" "$OUT" "$JOBS")
echo "build: $(( $(date +%s) - start )) s"

# Pixels against the committed manifest (other Pillow/libjpeg versions may differ slightly).
"$PYTHON" "$HERE/../../training_photos/compare_manifest.py" "$HERE/MANIFEST.tsv" "$OUT/MANIFEST.tsv"
du -sh "$OUT/train" "$OUT/heldout" | tr '\n' ' '; echo
