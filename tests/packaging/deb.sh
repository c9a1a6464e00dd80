#!/usr/bin/env bash
# cpack -G DEB of a built tree, installed with dpkg -i: the consumer project is
# built against the system copy (find_package without a prefix path), a
# program is compiled with pkg-config's flags alone, /usr/bin/loftq runs, and
# dpkg -r leaves nothing of the package behind.
#   deb.sh BUILD_DIR WORK_DIR CONSUMER_DIR VERSION
# Skips (77) without root or dpkg, and when a loftq package or headers are
# already installed (they are not this test's to replace or remove).
set -euo pipefail
build=$1 work=$2 consumer=$3 version=$4
skip() {
  echo "packaging.deb: skipped: $*"
  exit 77
}
[ "$(id -u)" = 0 ] || skip "dpkg -i needs root"
for p in dpkg dpkg-deb cpack pkg-config; do command -v $p >/dev/null || skip "$p is not installed"; done
dpkg -s loftq >/dev/null 2>&1 && skip "a loftq package is installed already"
[ -e /usr/include/loftq ] && skip "/usr/include/loftq exists already"
[ -e /usr/bin/loftq ] && skip "/usr/bin/loftq exists already"

rm -rf "$work"
mkdir -p "$work"
cd "$work"
cpack -G DEB --config "$build/CPackConfig.cmake" >cpack.log
deb=$(ls loftq_"$version"_*.deb)
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/loftq ./usr/include/loftq/loftq.hpp ./usr/share/cmake/loftq/loftqConfig.cmake \
  ./usr/share/pkgconfig/loftq.pc; do
  grep -q " $f\$" <<<"$contents" || { echo "packaging.deb: $deb lacks $f"; exit 1; }
done

# A -march=native build's package says it is one (CMakeLists.txt, CPack).
description=$(dpkg-deb -f "$deb" Description)
if grep -q '^LOFTQ_NATIVE:BOOL=ON$' "$build/CMakeCache.txt"; then
  grep -q 'march=native' <<<"$description" || { echo "packaging.deb: a native build's package does not say so"; exit 1; }
else
  ! grep -q 'march=native' <<<"$description" || { echo "packaging.deb: a portable package says march=native"; exit 1; }
fi

trap 'dpkg -r loftq >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb" >dpkg.log
/usr/bin/loftq --version | grep -q "$version" || { echo "packaging.deb: loftq --version is not $version"; exit 1; }
[ "$(pkg-config --modversion loftq)" = "$version" ] || { echo "packaging.deb: pkg-config's version"; exit 1; }
printf '%s\n' '#include <loftq/loftq.hpp>' '#include <loftq/version.hpp>' '#include <cstdio>' \
  'int main() { std::printf("%s\n", loftq::version().c_str()); }' >pc.cpp
# shellcheck disable=SC2046
c++ -std=c++17 -O0 $(pkg-config --cflags loftq) pc.cpp -o pc
[ "$(./pc)" = "$version" ] || { echo "packaging.deb: the pkg-config build prints $(./pc)"; exit 1; }
cmake -S "$consumer" -B consumer-build -DMODE=find_package -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O1 \
  >consumer.log
grep -q "/usr/share/cmake/loftq" consumer-build/CMakeCache.txt ||
  { echo "packaging.deb: the consumer did not find the system copy"; exit 1; }
cmake --build consumer-build >>consumer.log
consumer-build/consumer "$work"

dpkg -r loftq >dpkg.log
trap - EXIT
for f in /usr/bin/loftq /usr/include/loftq /usr/share/cmake/loftq /usr/share/pkgconfig/loftq.pc; do
  [ ! -e "$f" ] || { echo "packaging.deb: $f is left after dpkg -r"; exit 1; }
done
echo "packaging.deb: $deb installed, consumed (CMake, pkg-config) and removed"
