#!/usr/bin/env bash
# Build the image and write its gzip'd `docker save` for upload to grand-challenge.
#   IMAGE        image tag (default: image.env's); BASE_IMAGE etc. go to build.sh
#   EXPORT_FILE  where to write it (default export/<image>.tar.gz)
#   GZIP_LEVEL   1 (fast) .. 9 (small), default 6
set -euo pipefail
cd "$(dirname "$0")"
. ./image.env
IMAGE=${IMAGE:-$DEFAULT_IMAGE}
name=${IMAGE//\//-}
EXPORT_FILE=${EXPORT_FILE:-export/${name//:/-}.tar.gz}
GZIP_LEVEL=${GZIP_LEVEL:-6}

IMAGE=$IMAGE ./build.sh
mkdir -p "$(dirname "$EXPORT_FILE")"
partial="$EXPORT_FILE.partial"
trap 'rm -f "$partial"' EXIT
echo "saving $IMAGE to $EXPORT_FILE (gzip -$GZIP_LEVEL) ..."
docker save "$IMAGE" | gzip "-$GZIP_LEVEL" >"$partial"
mv "$partial" "$EXPORT_FILE"
bytes=$(wc -c <"$EXPORT_FILE")
echo "$EXPORT_FILE: $(du -h "$EXPORT_FILE" | cut -f1) ($bytes bytes) of image $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE") bytes unpacked)"
