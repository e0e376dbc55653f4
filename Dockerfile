# syntax=docker/dockerfile:1
# MONAI Application Package (MAP) image of the dynamic PET Patlak application, built directly with Docker.
# Same layout as `monai-deploy package` (holoscan-cli 4.2) makes: the app in /opt/holoscan/app, the prior
# in /opt/holoscan/models/prior, manifests /etc/holoscan/app.json and pkg.json (generated from app.yaml at
# build time by the packager's own code, scripts/make_map_manifests.py), input and output under
# /var/holoscan, the HOLOSCAN_* variables, a non-root user; `monai-deploy run` runs it like a packaged MAP.
#
# NOT BUILT on the development machines: they have no Docker engine. tests/test_map_packaging.py checks
# what can be checked without one: every COPY source exists, the manifests generate and pass the
# packager's checks, and the app runs from this file's layout (its COPY lines replayed into a temporary
# root, its ENV PYTHONPATH, its ENTRYPOINT) with only HOLOSCAN_INPUT/OUTPUT/MODEL_PATH set.
#
#   docker build -t dynamic-pet-patlak:0.1.0 .                             # CUDA 13 runtime base, GPU
#   docker build --build-arg BASE=cpu -t dynamic-pet-patlak:0.1.0-cpu .    # python:3.11-slim base, CPU only
#   docker run --rm --gpus all --ulimit stack=33554432 -v "$PWD/study:/var/holoscan/input:ro" \
#       -v "$PWD/results:/var/holoscan/output" -e PATLAK_METHOD=patlak dynamic-pet-patlak:0.1.0
# (--ulimit only silences holoscan's stack-size warning; `monai-deploy run` sets a larger stack itself.)

ARG BASE=cuda
# the base image the holoscan-cli 4.2.0 packager uses for dGPU MAPs
ARG CUDA_IMAGE=nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04
ARG CPU_IMAGE=python:3.11-slim

FROM ${CUDA_IMAGE} AS base-cuda
# Ubuntu 24.04's Python 3.12, in a virtual environment (the system one is externally managed)
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
# torch from PyPI is the CUDA build
ENV PATH=/opt/venv/bin:$PATH MAP_PLATFORM_CONFIG=dgpu TORCH_INDEX_URL=https://pypi.org/simple

FROM ${CPU_IMAGE} AS base-cpu
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH MAP_PLATFORM_CONFIG=cpu TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# holoscan links the CUDA 13 runtime even without a GPU: the runtime wheel, on the library path (SDK README)
RUN pip install --no-cache-dir "nvidia-cuda-runtime==13.*"
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib

FROM base-${BASE} AS release
ARG UID=1000
ARG GID=1000
LABEL org.opencontainers.image.title="Dynamic PET Patlak parametric imaging (research use only)" \
      org.opencontainers.image.version="0.1.0" \
      org.monai.deploy.app-sdk="4.0.0"

ENV HOLOSCAN_INPUT_PATH=/var/holoscan/input \
    HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \
    HOLOSCAN_WORKDIR=/var/holoscan \
    HOLOSCAN_APPLICATION=/opt/holoscan/app \
    HOLOSCAN_TIMEOUT=0 \
    HOLOSCAN_MODEL_PATH=/opt/holoscan/models \
    HOLOSCAN_DOCS_PATH=/opt/holoscan/docs \
    HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml \
    HOLOSCAN_APP_MANIFEST_PATH=/etc/holoscan/app.json \
    HOLOSCAN_PKG_MANIFEST_PATH=/etc/holoscan/pkg.json \
    HOLOSCAN_LOGS_PATH=/var/holoscan/logs \
    PYTHONPATH=/opt/holoscan:/opt/holoscan/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# torch first and alone (CPU or CUDA wheel), then the pinned requirements, which keep it
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt

# /opt/holoscan/app holds app/'s files with the packages it imports beside them, so both
# `python3 -m app` (PYTHONPATH above) and the packager's `python3 /opt/holoscan/app` start it
COPY app/ /opt/holoscan/app/
COPY operators/ /opt/holoscan/app/operators/
COPY dynamic_pet/ /opt/holoscan/app/dynamic_pet/
COPY models/*.py /opt/holoscan/app/models/
COPY models/prior/ /opt/holoscan/models/prior/
COPY app.yaml /var/holoscan/app.yaml
COPY scripts/make_map_manifests.py /tmp/make_map_manifests.py
RUN python3 /tmp/make_map_manifests.py --config /var/holoscan/app.yaml --app /opt/holoscan/app \
        --models /opt/holoscan/models/prior --platform-config "$MAP_PLATFORM_CONFIG" --out /etc/holoscan \
    && rm /tmp/make_map_manifests.py

RUN groupadd -g "$GID" holoscan \
    && useradd -m -u "$UID" -g "$GID" -s /bin/bash holoscan \
    && mkdir -p /var/holoscan/input /var/holoscan/output /var/holoscan/logs /opt/holoscan/docs \
    && chown -R holoscan:holoscan /var/holoscan
USER holoscan
WORKDIR /var/holoscan
ENTRYPOINT ["python3", "-m", "app"]
