# syntax=docker/dockerfile:1
# One image for every service: `abonent run <callback|verification|notifier>`, `abonent migrate`
# (deploy/k8s runs both). No container engine answers in this repository's CI: tests/deploy/test_dockerfile.py
# lints this file with hadolint there and builds it only where `docker info` succeeds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1: the project's wheel plus a wheel of every dependency, so the runtime stage installs offline
# and never compiles anything.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only what the wheel is built from.
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: a slim runtime with a venv holding the installed wheels, and nothing else.
FROM ${PYTHON_IMAGE} AS runtime
# Services bind every interface in a container: the pod network and NetworkPolicies decide who reaches them.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/abonent/bin:$PATH \
    ABONENT_HOST=0.0.0.0
# The wheels are bind-mounted from the build stage, so no wheel file lands in a layer; --no-index installs
# only those wheels (no network, no source builds). pip itself is removed from the venv afterwards: nothing
# installs at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/abonent \
    && /opt/abonent/bin/pip install --no-cache-dir --no-index --find-links=/wheels abonent \
    && /opt/abonent/bin/pip uninstall --yes pip \
    && groupadd --system --gid 10001 abonent \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin abonent
# Read-only root filesystem in Kubernetes: the only writable place is the /tmp emptyDir.
WORKDIR /tmp
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8001 8002 8003
ENTRYPOINT ["abonent"]
CMD ["run", "callback"]
