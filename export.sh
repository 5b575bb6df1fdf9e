#!/usr/bin/env bash
# Write the files to upload to grand-challenge and print each with its size:
#   the image        gzip'd `docker save` of the image (built first with ./build.sh); uploaded once,
#                    as the algorithm's container image
#   the model        a .tar.gz of algorithm/model's files at its top level (metadata.json, model.onnx,
#                    refine.onnx), uploaded under Algorithm -> Models; the platform extracts it to
#                    /opt/ml/model, where the container looks first
# Usage: ./export.sh                 both
#        ./export.sh --model-only    the model tarball alone, no Docker needed (after retraining,
#                                    when nothing else changed: the image uploaded before stays)
#        ./export.sh --help          this text
#   IMAGE          image tag (default: image.env's); BASE_IMAGE, WITH_MODEL etc. go to build.sh
#   EXPORT_FILE    the image's file (default export/<image>.tar.gz)
#   MODEL_TARBALL  the model's file (default export/model.tar.gz)
#   GZIP_LEVEL     the image's gzip level, 1 (fast) .. 9 (small), default 6
set -euo pipefail
model_only=0
for arg in "$@"; do
  case $arg in
    --model-only) model_only=1 ;;
    -h|--help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$arg' (see ./export.sh --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")"
. ./image.env
IMAGE=${IMAGE:-$DEFAULT_IMAGE}
name=${IMAGE//\//-}
EXPORT_FILE=${EXPORT_FILE:-export/${name//:/-}.tar.gz}
MODEL_TARBALL=${MODEL_TARBALL:-export/model.tar.gz}
MODEL_DIR=algorithm/model
GZIP_LEVEL=${GZIP_LEVEL:-6}
trap 'rm -f "$EXPORT_FILE.partial" "$MODEL_TARBALL.partial"' EXIT

# describe FILE WHAT: the line that says what was written
describe() { echo "$1: $(du -h "$1" | cut -f1) ($(wc -c <"$1") bytes), $2"; }

[ -f "$MODEL_DIR/metadata.json" ] || { echo "error: $MODEL_DIR/metadata.json: not found; export a model there first (python -m training.export)" >&2; exit 1; }
echo "packing $MODEL_DIR into $MODEL_TARBALL ..."
mkdir -p "$(dirname "$MODEL_TARBALL")"
tar -czf "$MODEL_TARBALL.partial" -C "$MODEL_DIR" .
mv "$MODEL_TARBALL.partial" "$MODEL_TARBALL"
model_line=$(describe "$MODEL_TARBALL" "the model ($(ls "$MODEL_DIR" | tr '\n' ' ' | sed 's/ $//')) for Algorithm -> Models")
if [ "$model_only" = 1 ]; then
  echo "$model_line"
  exit 0
fi

IMAGE=$IMAGE ./build.sh
mkdir -p "$(dirname "$EXPORT_FILE")"
echo "saving $IMAGE to $EXPORT_FILE (gzip -$GZIP_LEVEL) ..."
docker save "$IMAGE" | gzip "-$GZIP_LEVEL" >"$EXPORT_FILE.partial"
mv "$EXPORT_FILE.partial" "$EXPORT_FILE"
describe "$EXPORT_FILE" "image $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE") bytes unpacked$([ "${WITH_MODEL:-1}" = 0 ] && echo ", without a model"))"
echo "$model_line"
