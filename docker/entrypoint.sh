#!/bin/sh
# head | worker: start a Ray node as modelserve needs it (settings from the environment:
# `python -m modelserve.node --help`). Anything else runs as a command, e.g. `python controller.py`.
set -e
case "$1" in
  head|worker) exec python -m modelserve.node "$1" ;;
  *) exec "$@" ;;
esac
