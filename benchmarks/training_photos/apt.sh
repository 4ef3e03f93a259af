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
