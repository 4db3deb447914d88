#!/bin/sh
# Copies the zone files into the writable /var/lib/bind on the first start
# (named writes journals and dumps beside them), then runs named in the
# foreground as the bind user.
set -eu
for zone in /etc/bind/zones/*.zone; do
    [ -e "/var/lib/bind/$(basename "$zone")" ] || cp "$zone" /var/lib/bind/
done
chown -R bind:bind /var/lib/bind /var/cache/bind
exec /usr/sbin/named -g -u bind -c /etc/bind/named.conf
