#!/usr/bin/env bash
# Build the image, run it on test/input under grand-challenge's restrictions, and compare its
# output with test/expected_output.json within a tolerance: once with the model built in, and once
# with the model tarball (./export.sh --model-only) extracted as the platform does and mounted
# read-only at /opt/ml/model.
#   IMAGE         image tag (default: image.env's); BASE_IMAGE etc. go to build.sh
#   NO_BUILD=1    test the image as it is, without ./build.sh
#   WITH_MODEL=0  the image has no model inside (build.sh's WITH_MODEL=0): it must refuse to run
#                 without one at /opt/ml/model, and then passes with the mounted tarball
#   TOLERANCE     largest allowed landmark deviation in pixels (default: test/compare_outputs.py's,
#                 which also says why the check is not exact equality)
#   GPUS          "all" or "none" (default: all when nvidia-smi sees a GPU, else none)
#   MEMORY        the container's memory limit (default 8g, as in the organisers' test)
# The last line is `parity OK (...)` (exit 0) or `parity FAILED: <why>` (exit 1); the one before it
# is `model tarball (/opt/ml/model): parity OK (...)`.
set -euo pipefail
cd "$(dirname "$0")"

. ./image.env
IMAGE=${IMAGE:-$DEFAULT_IMAGE}
TOLERANCE=${TOLERANCE:-}
MEMORY=${MEMORY:-8g}
WITH_MODEL=${WITH_MODEL:-1}
INPUT_DIR=$PWD/test/input/images/lateral-dental-x-rays
EXPECTED=$PWD/test/expected_output.json
OUTPUT_FILE=orthodontic-landmarks.json
MODEL_MOUNT=/opt/ml/model

RUN_ID=cldetection2023-output-$(date +%Y%m%d%H%M%S)-$$-$RANDOM
VOLUME=""  # the output volume of the run under way
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cldetection2023-test.XXXXXX")
volume_made=0
done_ok=0

remove_containers() {  # only needed when test.sh is stopped while a container runs
  if [ -n "$VOLUME" ]; then
    docker rm --force "$VOLUME-run" "$VOLUME-read" >/dev/null 2>&1 || true
  fi
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
[[ $WITH_MODEL == [01] ]] || fail "WITH_MODEL must be 1 or 0, not '$WITH_MODEL'"
[ -d "$INPUT_DIR" ] || fail "no test input folder $INPUT_DIR"
[ -f "$EXPECTED" ] || fail "no $EXPECTED"
command -v python3 >/dev/null || fail "python3 is needed on the host to compare the outputs"
python3 -c 'import tarfile; tarfile.data_filter' 2>/dev/null \
  || fail "the host's python3 has no tarfile filter=\"data\" (3.12, or 3.8.17+, 3.9.17+, 3.10.12+, 3.11.4+), which grand-challenge extracts models with"
# The container runs as an unprivileged user: the read-only input must be readable by others.
if [ -n "$(find "$INPUT_DIR" \( -type f ! -perm -o=r \) -o \( -type d ! -perm -o=rx \) | head -n 1)" ]; then
  echo "warning: some of $INPUT_DIR is not world-readable; the container's user may not read it" >&2
fi

if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "== building $IMAGE"
  IMAGE=$IMAGE WITH_MODEL=$WITH_MODEL ./build.sh || fail "the image did not build"
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "no image $IMAGE"

GPU_ARGS=()
case ${GPUS:-auto} in
  all) GPU_ARGS=(--gpus all) ;;
  none) ;;
  auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU_ARGS=(--gpus all); fi ;;
  *) fail "GPUS must be all, none or auto, not ${GPUS}" ;;
esac

# The model tarball made as for upload, extracted as grand-challenge does (tarfile's "data" filter, no
# top-level folder stripped) into a folder the container's unprivileged user can read.
echo "== packing the model tarball (./export.sh --model-only) and extracting it as grand-challenge does"
MODEL_TARBALL=$WORK/model.tar.gz ./export.sh --model-only | sed 's/^/  /' || fail "./export.sh --model-only failed"
mkdir -m 755 "$WORK/model"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
  "$WORK/model.tar.gz" "$WORK/model" || fail "the model tarball does not extract with tarfile's \"data\" filter"

# run_image NAME [docker run options...]: the image on test/input under grand-challenge's restrictions
# with a fresh output volume; sets run_status and elapsed, leaves its log in $WORK/NAME.stdout and
# NAME.stderr and, when it succeeded, its output in $WORK/NAME.json.
run_image() {
  local name=$1
  shift
  VOLUME=$RUN_ID-$name
  docker volume create "$VOLUME" >/dev/null || fail "could not create docker volume $VOLUME"
  volume_made=1
  echo "== running $IMAGE ($name) on $(ls "$INPUT_DIR" | tr '\n' ' ')(${GPU_ARGS[*]:-no GPU}, network none, memory $MEMORY)"
  local started
  started=$(date +%s)
  run_status=0
  docker run --rm --name "$VOLUME-run" \
    --network none \
    --cap-drop ALL \
    --security-opt no-new-privileges \
    --memory "$MEMORY" --memory-swap "$MEMORY" \
    --shm-size 128m \
    --pids-limit 256 \
    "${GPU_ARGS[@]}" \
    "$@" \
    --volume "$INPUT_DIR":/input/images/lateral-dental-x-rays:ro \
    --volume "$VOLUME":/output \
    "$IMAGE" >"$WORK/$name.stdout" 2>"$WORK/$name.stderr" || run_status=$?
  elapsed=$(( $(date +%s) - started ))
  if [ "$run_status" = 0 ]; then
    # Read the result back out of the volume with the same image (no host path to the volume needed).
    docker run --rm --name "$VOLUME-read" --network none --cap-drop ALL --security-opt no-new-privileges \
      --volume "$VOLUME":/output:ro --entrypoint cat "$IMAGE" "/output/$OUTPUT_FILE" >"$WORK/$name.json" \
      2>"$WORK/$name.cat" || { cat "$WORK/$name.cat" "$WORK/$name.stderr" >&2; fail "$name: the container wrote no /output/$OUTPUT_FILE"; }
  fi
  remove_volume
}

# check_parity NAME LABEL ORIGIN [docker run options...]: run the image, check that it loaded the model
# from ORIGIN (as its log names it: built in, mounted) and compare its output with the expected one;
# prints `LABEL: parity OK (...)` and adds `LABEL: ...` to $summary, or fails.
summary=""
check_parity() {
  local name=$1 label=$2 origin=$3
  shift 3
  run_image "$name" "$@"
  if [ "$run_status" != 0 ]; then
    echo "-- the container's stdout:"; cat "$WORK/$name.stdout"
    echo "-- the container's stderr:"; cat "$WORK/$name.stderr"
    fail "$label: the container exited with code $run_status after ${elapsed} s"
  fi
  echo "the container finished in ${elapsed} s; the model it loaded and the end of its log:"
  local loaded
  loaded=$(grep -m 1 ' INFO model ' "$WORK/$name.stderr" || true)
  { echo "$loaded"; grep -v ' INFO model ' "$WORK/$name.stderr" | tail -n 3; } | sed 's/^/  /'
  [[ $loaded == *" ($origin, graphs sha256 "* ]] || fail "$label: the container did not load the model $origin"
  echo "== comparing with test/expected_output.json"
  local status=0 verdict
  python3 test/compare_outputs.py "$EXPECTED" "$WORK/$name.json" ${TOLERANCE:+--tolerance "$TOLERANCE"} \
    >"$WORK/$name.parity" || status=$?
  sed '$d' "$WORK/$name.parity"  # the details; the verdict is the last line
  verdict=$(tail -n 1 "$WORK/$name.parity")
  [ "$status" = 0 ] || fail "$label: ${verdict#parity FAILED: }"
  echo "$label: $verdict"
  verdict=${verdict#parity OK (}
  summary+="${summary:+; }$label: ${verdict%)}"
}

if [ "$WITH_MODEL" = 1 ]; then
  check_parity built-in "built-in model" "built in"
else
  run_image no-model
  refusal=$(tail -n 1 "$WORK/no-model.stderr")
  [ "$run_status" != 0 ] || fail "the image ran without a model at $MODEL_MOUNT although WITH_MODEL=0 says it has none"
  [[ $refusal == error:* ]] || { cat "$WORK/no-model.stderr"; fail "without a model, the image's last line is not an error: line"; }
  echo "without a model at $MODEL_MOUNT: refused as it should (exit code $run_status): $refusal"
  summary="no model: refused"
fi
check_parity tarball "model tarball ($MODEL_MOUNT)" mounted --volume "$WORK/model":"$MODEL_MOUNT":ro
done_ok=1
echo "parity OK ($summary)"
