#!/bin/sh
# Broker entrypoint for the compose cluster (eclipse-mosquitto 2 image, busybox sh).
# The coordinator writes the broker configuration (mosquitto.conf, per-agent ACL and the
# password file) into the shared /broker volume at start; this script waits for it, runs
# mosquitto, and makes it reload the password file (SIGHUP) whenever the coordinator
# enrolls or revokes an agent, which rewrites that file.
set -eu
conf=/broker/mosquitto.conf
passwords=/broker/passwords

echo "waiting for the coordinator to write $conf"
while [ ! -f "$conf" ] || [ ! -f "$passwords" ]; do sleep 1; done

mosquitto -c "$conf" &
pid=$!
trap 'kill -TERM "$pid"; wait "$pid"; exit 0' TERM INT

last=$(stat -c %Y "$passwords")
while kill -0 "$pid" 2>/dev/null; do
  sleep 2
  now=$(stat -c %Y "$passwords" 2>/dev/null || echo "$last")
  if [ "$now" != "$last" ]; then
    last=$now
    kill -HUP "$pid"
  fi
done
wait "$pid"
