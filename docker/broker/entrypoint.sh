#!/bin/sh
# Broker entrypoint for the compose cluster (eclipse-mosquitto 2 image, busybox sh), run as
# uid 10001 like every service. The coordinator writes the broker configuration
# (mosquitto.conf, per-agent ACL and the password file) into the shared volume, /broker
# unless given as $1, at start; this script waits for it, runs mosquitto, and makes it reload
# the password file (SIGHUP) whenever the coordinator enrolls or revokes an agent, which
# rewrites that file.
set -eu
dir=${1:-/broker}
conf=$dir/mosquitto.conf
passwords=$dir/passwords

echo "waiting for the coordinator to write $conf"
while [ ! -f "$conf" ] || [ ! -f "$passwords" ]; do sleep 1; done

# The content, not the mtime: two rewrites within one second must not look like one. Taken
# before mosquitto reads the file, so a rewrite while it starts is reloaded too.
last=$(cksum <"$passwords")
mosquitto -c "$conf" &
pid=$!
trap 'kill -TERM "$pid"; wait "$pid"; exit 0' TERM INT

while kill -0 "$pid" 2>/dev/null; do
  sleep 2
  now=$(cksum <"$passwords" 2>/dev/null || echo "$last")
  if [ "$now" != "$last" ]; then
    last=$now
    kill -HUP "$pid"
  fi
done
wait "$pid"
