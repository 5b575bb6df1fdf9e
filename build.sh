#!/usr/bin/env bash
# Build the submission image.
#   IMAGE              tag to build (default: image.env's)
#   BASE_IMAGE         the Python base (default python:3.11-slim-bookworm; without a
#                      registry: BASE_IMAGE=$(.ci/make-base-image.sh) ./build.sh)
#   DOCKER_BUILD_ARGS  extra `docker build` options, split on spaces, e.g. "--network host"
#                      where the build's default network cannot reach the package index
#   WITH_MODEL         1 (default): algorithm/model built in; 0: no model inside, the image then runs
#                      only with one at /opt/ml/model (uploaded on grand-challenge: Algorithm -> Models)
set -euo pipefail
cd "$(dirname "$0")"
. ./image.env
IMAGE=${IMAGE:-$DEFAULT_IMAGE}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
case ${WITH_MODEL:-1} in
  1) target=with-model ;;
  0) target=without-model ;;
  *) echo "error: WITH_MODEL must be 1 or 0, not '$WITH_MODEL'" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of options
docker build ${DOCKER_BUILD_ARGS:-} --build-arg BASE_IMAGE="$BASE_IMAGE" --target "$target" --tag "$IMAGE" .
