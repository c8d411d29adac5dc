#!/usr/bin/env bash
# Build the images the compose e2e test needs from what is on this machine (no image can
# be pulled here): each is `FROM scratch` with a binary built or installed on the host and
# the shared libraries it links (as `ldd` lists them).
#
#   local-image.sh aether   TAG AETHER_BIN     # same user, paths, entrypoint and
#                                              # healthcheck as the repo's Dockerfile
#   local-image.sh haproxy  TAG [HAPROXY_BIN]  # like the official image: the config at
#                                              # /usr/local/etc/haproxy/haproxy.cfg
#   local-image.sh otlpsink TAG OTLPSINK_BIN   # the test's OTLP receiver (Jaeger stand-in)
#   local-image.sh prometheus TAG [PROM_BIN]   # like prom/prometheus: config at
#                                              # /etc/prometheus/prometheus.yml
set -euo pipefail

kind=$1 tag=$2 bin=${3:-}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/etc" "$root/tmp"

# The binary's shared libraries and the dynamic loader, at the paths the binary names.
add_binary() { # SRC DEST
  install -D -m 0755 "$1" "$root$2"
  ldd "$1" | grep -o '/[^ )]*' | sort -u | while read -r lib; do
    cp -L --parents "$lib" "$root"
  done
}

cat > "$root/etc/nsswitch.conf" <<'NSS'
hosts: files dns
NSS
printf 'root:x:0:0:root:/root:/sbin/nologin\naether:x:10001:10001:aether:/var/lib/aether:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\naether:x:10001:\n' > "$root/etc/group"

case "$kind" in
  aether)
    add_binary "$bin" /usr/local/bin/aether
    mkdir -p "$root/var/lib/aether"
    chown 10001:10001 "$root/var/lib/aether"   # a new volume takes this owner
    cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
ADD rootfs.tar /
USER aether:aether
WORKDIR /var/lib/aether
VOLUME ["/var/lib/aether"]
EXPOSE 9000 9001
ENV AETHER_DATA_DIR=/var/lib/aether
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/aether", "probe", "http://127.0.0.1:9001/ready"]
ENTRYPOINT ["/usr/local/bin/aether"]
CMD ["server"]
DOCKERFILE
    ;;
  haproxy)
    add_binary "${bin:-$(command -v haproxy || echo /usr/sbin/haproxy)}" /usr/local/sbin/haproxy
    mkdir -p "$root/usr/local/etc/haproxy" "$root/var/lib/haproxy"
    cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
ADD rootfs.tar /
STOPSIGNAL SIGUSR1
ENTRYPOINT ["/usr/local/sbin/haproxy", "-W", "-db"]
CMD ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]
DOCKERFILE
    ;;
  otlpsink)
    add_binary "$bin" /usr/local/bin/otlpsink
    cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
ADD rootfs.tar /
ENTRYPOINT ["/usr/local/bin/otlpsink", "0.0.0.0:4317"]
DOCKERFILE
    ;;
  prometheus)
    add_binary "${bin:-$(command -v prometheus || echo /usr/bin/prometheus)}" /bin/prometheus
    mkdir -p "$root/etc/prometheus" "$root/prometheus"
    cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
ADD rootfs.tar /
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
DOCKERFILE
    ;;
  *) echo "unknown image kind: $kind" >&2; exit 2 ;;
esac

# ADD of a tar keeps the owners set above (COPY would make everything root's).
tar -C "$root" --numeric-owner -cf "$ctx/rootfs.tar" .
rm -rf "$root"
docker build --quiet -t "$tag" "$ctx" >/dev/null 2>"$ctx/build.err" || { cat "$ctx/build.err" >&2; exit 1; }
echo "built $tag"
