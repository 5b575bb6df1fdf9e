# CL-Detection 2023 submission: cephalometric landmarks with the ONNX model in algorithm/model.
# Build with ./build.sh, test with ./test.sh, export for upload with ./export.sh.
# Two targets: with-model (the default) has algorithm/model built in; without-model (WITH_MODEL=0
# ./build.sh) runs only with a model at /opt/ml/model, uploaded on grand-challenge apart from the
# image (Algorithm -> Models).
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and its venv module (on a machine
# without a container registry, .ci/make-base-image.sh builds one from Debian's packages).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS without-model

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app

# The unprivileged user the algorithm runs as. /output belongs to it, so a fresh named
# volume mounted there is writable (docker copies this ownership into an empty volume).
RUN groupadd --system user \
 && useradd --system --gid user --create-home --no-log-init --shell /usr/sbin/nologin user \
 && mkdir -p /opt/app /input /output \
 && chown user:user /output

# Dependencies first (a venv, so a base whose system pip is externally managed works too):
# changing the code or the model does not reinstall them.
COPY requirements.txt /opt/app/requirements.txt
RUN python3 -m venv /opt/venv \
 && pip install --no-cache-dir -r /opt/app/requirements.txt \
 && python -c "import evalutils, numpy, onnxruntime, pandas, SimpleITK; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"

# The code alone (the package is flat: its modules, not the model folder).
COPY algorithm/*.py /opt/app/algorithm/
RUN python -m compileall -q /opt/app/algorithm \
 && python -m algorithm.process --help >/dev/null

USER user
WORKDIR /opt/app
# Defaults: reads /input/images/lateral-dental-x-rays, writes /output/orthodontic-landmarks.json,
# loads the model at /opt/ml/model when one is there, else the built-in one, and runs on the GPU
# when one is usable, else on the CPU. Extra arguments are passed on.
ENTRYPOINT ["python", "-m", "algorithm.process"]

# The default target: the same with algorithm/model built in (a model at /opt/ml/model still comes first).
FROM without-model AS with-model
COPY algorithm/model/ /opt/app/algorithm/model/
