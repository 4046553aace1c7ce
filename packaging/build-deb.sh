#!/bin/sh
# Builds the Debian package from a CMake build dir, offline, with dpkg-deb alone (no
# debhelper): stage `cmake --install` under /usr, add the control files, build.
# Usage: build-deb.sh BUILD_DIR [OUT_DIR]   (OUT_DIR defaults to BUILD_DIR)
# Prints the path of the .deb on standard output.
set -eu

build=$(cd "$1" && pwd)
out=$(mkdir -p "${2:-$1}" && cd "${2:-$1}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")

version=$(sed -n 's/^project(iotfin VERSION \([0-9][0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
[ -n "$version" ] || { echo "build-deb: no version in CMakeLists.txt" >&2; exit 1; }
arch=$(dpkg --print-architecture)
deb="$out/iotfin_${version}_${arch}.deb"

# A private staging dir: two builds at once never mix their trees.
stage=$(mktemp -d "${TMPDIR:-/tmp}/iotfin-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
mkdir -p "$root"

DESTDIR="$root" cmake --install "$build" --prefix /usr --strip >/dev/null
# Debian 12 keeps system units in /lib/systemd/system (debhelper does the same).
mkdir -p "$root/lib/systemd"
mv "$root/usr/lib/systemd/system" "$root/lib/systemd/system"
rmdir "$root/usr/lib/systemd"
install -m 0644 "$here/debian/copyright" "$root/usr/share/doc/iotfin/copyright"

# dpkg-deb wants sane modes whatever the umask of the caller.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -exec chmod 0644 {} +
chmod 0755 "$root/usr/bin/iotfin"
# It may hold secrets; systemd reads it as root.
chmod 0600 "$root/etc/default/iotfin"

mkdir -m 0755 "$root/DEBIAN"
for s in postinst prerm postrm; do
  install -m 0755 "$here/debian/$s" "$root/DEBIAN/$s"
done
printf '/etc/default/iotfin\n' >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum) >"$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
  "$here/debian/control.in" >"$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums" "$root/DEBIAN/control"

dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
