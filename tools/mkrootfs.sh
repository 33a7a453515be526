#!/bin/sh
# Build a minimal busybox rootfs from Debian's busybox-static: mkrootfs.sh DIR
set -eu
dir=$1
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "mkrootfs: $busybox missing: apt-get install busybox-static" >&2; exit 1; }
mkdir -p "$dir/bin" "$dir/etc" "$dir/proc" "$dir/sys" "$dir/dev" "$dir/tmp" "$dir/root" "$dir/run" "$dir/var"
cp "$busybox" "$dir/bin/busybox"
for applet in $("$busybox" --list); do
    [ -e "$dir/bin/$applet" ] || ln -s busybox "$dir/bin/$applet"
done
chmod 1777 "$dir/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\nuser:x:1000:1000:user:/home/user:/bin/sh\n' > "$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\nuser:x:1000:\nwheel:x:10:user\n' > "$dir/etc/group"
mkdir -p "$dir/home/user" && chown 1000:1000 "$dir/home/user"
