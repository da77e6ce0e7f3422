#!/usr/bin/env bash
# Takes docs/run-page.png (a finished score-fleet run in the Prefect UI), docs/run-summary.png (its
# summary artifact, which leads with the devices in alert) and docs/run-anomaly-map.png (its anomaly
# picture artifact) from a throwaway local Prefect server and a realistic generated fleet of 60 devices.
# Needs .venv (`make demo` builds it) and Debian's chromium (`apt-get install -y chromium`).
# Run from anywhere: docs/screenshot.sh. CI does not run it; rerun it when the UI or artifacts change.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
HOUR=2026-11-27T10            # fixed, so the picture does not change with the day it is taken
TRAIN_END=2026-11-27T09

work=$(mktemp -d)
port=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PREFECT_HOME=$work/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_URL=http://127.0.0.1:$port/api PREFECT_UI_API_URL=http://127.0.0.1:$port/api
export DASK_TEMPORARY_DIRECTORY=$work/dask

# Own process group, so that stopping it also stops the uvicorn process it starts.
setsid "$BIN/prefect" server start --host 127.0.0.1 --port "$port" > "$work/server.log" 2>&1 &
server=$!
trap 'kill -- -$server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 120); do curl -sf "$PREFECT_API_URL/health" > /dev/null && break; sleep 1; done

"$BIN/fleetscore" generate --store "$work/store" --devices 60 --hours 3 --end $HOUR --realistic
"$BIN/fleetscore" train --store "$work/store" --end $TRAIN_END --hours 2 > /dev/null
"$BIN/fleetscore" score --store "$work/store" --hour $HOUR > /dev/null

ids=$("$BIN/python" - "$HOUR" <<'PY'
import sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

with get_client(sync_client=True) as client:
    (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"any_": [f"score-{sys.argv[1]}"]}))
    keys = [f"score-{sys.argv[1].lower()}-{name}" for name in ("summary", "anomaly-map")]
    found = {a.key: a.id for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))}
    print(run.id, *(found[k] for k in keys))
PY
)
read -r run summary artifact <<< "$ids"

shot() {  # shot FILE URL: a headless, sandbox-free Chromium that keeps no state and calls nowhere
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$(mktemp -d -p "$work")" \
    --virtual-time-budget=20000 --window-size=1400,1100 --screenshot="$1" "$2" 2> /dev/null
}
shot docs/run-page.png "http://127.0.0.1:$port/runs/flow-run/$run"
shot docs/run-summary.png "http://127.0.0.1:$port/artifacts/artifact/$summary"
shot docs/run-anomaly-map.png "http://127.0.0.1:$port/artifacts/artifact/$artifact"
echo "docs/run-page.png, docs/run-summary.png and docs/run-anomaly-map.png taken from run $run"
