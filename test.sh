#!/usr/bin/env bash
# Build the image, run it on test/input under grand-challenge's restrictions, and compare its
# output with test/expected_output.json within a tolerance.
#   IMAGE       image tag (default: image.env's); BASE_IMAGE etc. go to build.sh
#   NO_BUILD=1  test the image as it is, without ./build.sh
#   TOLERANCE   largest allowed landmark deviation in pixels (default: test/compare_outputs.py's,
#               which also says why the check is not exact equality)
#   GPUS        "all" or "none" (default: all when nvidia-smi sees a GPU, else none)
#   MEMORY      the container's memory limit (default 8g, as in the organisers' test)
# The last line is `parity OK (...)` (exit 0) or `parity FAILED: <why>` (exit 1).
set -euo pipefail
cd "$(dirname "$0")"

. ./image.env
IMAGE=${IMAGE:-$DEFAULT_IMAGE}
TOLERANCE=${TOLERANCE:-}
MEMORY=${MEMORY:-8g}
INPUT_DIR=$PWD/test/input/images/lateral-dental-x-rays
EXPECTED=$PWD/test/expected_output.json
OUTPUT_FILE=orthodontic-landmarks.json

VOLUME=cldetection2023-output-$(date +%Y%m%d%H%M%S)-$$-$RANDOM
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cldetection2023-test.XXXXXX")
volume_made=0
done_ok=0

remove_containers() {  # only needed when test.sh is stopped while a container runs
  docker rm --force "$VOLUME-run" "$VOLUME-read" >/dev/null 2>&1 || true
}
remove_volume() {
  if [ "$volume_made" = 1 ]; then
    docker volume rm --force "$VOLUME" >/dev/null 2>&1 || echo "warning: could not remove docker volume $VOLUME" >&2
    volume_made=0
  fi
}
finish() {
  local status=$?
  remove_containers
  remove_volume
  rm -rf "$WORK"
  if [ "$status" != 0 ] && [ "$done_ok" = 0 ]; then
    echo "parity FAILED: ${failure:-test.sh stopped with exit code $status}"
    exit 1
  fi
}
trap finish EXIT
trap 'failure="interrupted"; exit 130' INT TERM
failure=""
fail() { failure=$1; exit 1; }

[[ -z $TOLERANCE || $TOLERANCE =~ ^[0-9]+([.][0-9]*)?$ ]] || fail "TOLERANCE must be a number of pixels, not '$TOLERANCE'"
[ -d "$INPUT_DIR" ] || fail "no test input folder $INPUT_DIR"
[ -f "$EXPECTED" ] || fail "no $EXPECTED"
command -v python3 >/dev/null || fail "python3 is needed on the host to compare the outputs"
# The container runs as an unprivileged user: the read-only input must be readable by others.
if [ -n "$(find "$INPUT_DIR" \( -type f ! -perm -o=r \) -o \( -type d ! -perm -o=rx \) | head -n 1)" ]; then
  echo "warning: some of $INPUT_DIR is not world-readable; the container's user may not read it" >&2
fi

if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "== building $IMAGE"
  IMAGE=$IMAGE ./build.sh || fail "the image did not build"
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "no image $IMAGE"

GPU_ARGS=()
case ${GPUS:-auto} in
  all) GPU_ARGS=(--gpus all) ;;
  none) ;;
  auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU_ARGS=(--gpus all); fi ;;
  *) fail "GPUS must be all, none or auto, not ${GPUS}" ;;
esac

docker volume create "$VOLUME" >/dev/null || fail "could not create docker volume $VOLUME"
volume_made=1

echo "== running $IMAGE on $(ls "$INPUT_DIR" | tr '\n' ' ')(${GPU_ARGS[*]:-no GPU}, network none, memory $MEMORY)"
started=$(date +%s)
status=0
docker run --rm --name "$VOLUME-run" \
  --network none \
  --cap-drop ALL \
  --security-opt no-new-privileges \
  --memory "$MEMORY" --memory-swap "$MEMORY" \
  --shm-size 128m \
  --pids-limit 256 \
  "${GPU_ARGS[@]}" \
  --volume "$INPUT_DIR":/input/images/lateral-dental-x-rays:ro \
  --volume "$VOLUME":/output \
  "$IMAGE" >"$WORK/stdout" 2>"$WORK/stderr" || status=$?
elapsed=$(( $(date +%s) - started ))
if [ "$status" != 0 ]; then
  echo "-- the container's stdout:"; cat "$WORK/stdout"
  echo "-- the container's stderr:"; cat "$WORK/stderr"
  fail "the container exited with code $status after ${elapsed} s"
fi
echo "the container finished in ${elapsed} s; the end of its log:"
tail -n 3 "$WORK/stderr" | sed 's/^/  /'

# Read the result back out of the volume with the same image (no host path to the volume needed).
docker run --rm --name "$VOLUME-read" --network none --cap-drop ALL --security-opt no-new-privileges \
  --volume "$VOLUME":/output:ro --entrypoint cat "$IMAGE" "/output/$OUTPUT_FILE" >"$WORK/actual.json" \
  2>"$WORK/cat.stderr" || { cat "$WORK/cat.stderr" >&2; cat "$WORK/stderr" >&2; fail "the container wrote no /output/$OUTPUT_FILE"; }
remove_volume

echo "== comparing with test/expected_output.json"
status=0
python3 test/compare_outputs.py "$EXPECTED" "$WORK/actual.json" ${TOLERANCE:+--tolerance "$TOLERANCE"} || status=$?
done_ok=1  # compare_outputs.py printed the verdict line
exit "$status"
