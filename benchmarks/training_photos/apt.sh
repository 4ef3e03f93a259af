# apt_opts SUITE: apt-get options for an apt state of our own per suite under $WORK/apt-SUITE,
# so the host's sources and caches do not matter (sourced by recipe.sh here and by
# benchmarks/data/photos2/recipe.sh).
apt_opts() {
  local d="$WORK/apt-$1"
  echo "-o Dir::Etc::SourceList=$d/sources.list -o Dir::Etc::SourceParts=/nonexistent" \
       "-o Dir::Etc::Parts=/nonexistent -o Dir::State::Lists=$d/lists -o Dir::Cache=$d/cache" \
       "-o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Acquire::Languages=none" \
       "-o Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false" \
       "-o Acquire::IndexTargets::deb::Contents-all::DefaultEnabled=false" \
       "-o APT::Sandbox::User=root"
}

# fetch_deb PKG SUITE VER: print the path of PKG's .deb under $WORK/debs, downloading the pinned
# VER; when the archive no longer serves VER, warn and take its current version (STRICT=1: stop),
# and let the recipe's manifest comparison show whether the pixels drifted.
fetch_deb() {
  local pkg=$1 suite=$2 ver=$3 deb got
  deb=$(ls "$WORK/debs/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    # shellcheck disable=SC2046
    if ! (cd "$WORK/debs" && apt-get $(apt_opts "$suite") download -qq "$pkg=$ver") >&2; then
      [ "${STRICT:-0}" = 1 ] && { echo "$pkg $ver is no longer served by $suite" >&2; return 1; }
      echo "WARNING: $pkg $ver is no longer served by $suite; using the current version" >&2
      # shellcheck disable=SC2046
      (cd "$WORK/debs" && apt-get $(apt_opts "$suite") download -qq "$pkg") >&2 || return 1
    fi
    deb=$(ls -t "$WORK/debs/${pkg}_"*.deb | head -n1)
  fi
  got=$(dpkg-deb -f "$deb" Version)
  [ "$got" = "$ver" ] || echo "WARNING: $pkg: pinned $ver, using $got (pixels may differ)" >&2
  echo "$deb"
}
