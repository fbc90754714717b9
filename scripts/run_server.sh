#!/usr/bin/env bash
# The main job: set up the environment (idempotent), generate the small synthetic sample datastore
# (CT-like volumes in which some slices carry a lesion) unless it exists, and start the MONAI Label server on it.
# Extra arguments are passed to `monailabel start_server` (e.g. --port 8001, --conf kimg 20).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
SAMPLE="$ROOT/sample_datastore"
STUDIES="${SSGL_STUDIES:-$SAMPLE}"
if [ "$STUDIES" = "$SAMPLE" ] && [ ! -d "$SAMPLE" ]; then   # only the sample is made here; a missing folder of
    "$ROOT/.venv/bin/python" "$ROOT/scripts/make_sample_datastore.py" --out "$SAMPLE"   # yours is refused
fi
HOST="${SSGL_HOST:-127.0.0.1}" PORT="${SSGL_PORT:-8000}"
args=("$@")
for i in "${!args[@]}"; do   # a --host / --port given here wins, in the URL printed too
    case "${args[$i]}" in
        --port) PORT="${args[$((i + 1))]:-$PORT}" ;;
        --host) HOST="${args[$((i + 1))]:-$HOST}" ;;
    esac
done
echo "SS-StyleGAN Label: label in a browser at http://$HOST:$PORT/ui/ once the server is up (REST API: http://$HOST:$PORT/docs)"
export PATH="$ROOT/.venv/bin:$PATH"
cd "$ROOT"
exec monailabel start_server --app monailabel_app --studies "$STUDIES" --host "$HOST" --port "$PORT" "$@"
