# Dray's container image: one image for every role.
#
#   dray broker                                              a broker (the default command)
#   dray up                                                  broker + Dagster with embedded defaults (one box)
#   dagster-webserver -w dagster_workspace.yaml -h 0.0.0.0 -p 3000    Dagster UI   } DAGSTER_HOME=/opt/dray/dagster
#   dagster-daemon run -w dagster_workspace.yaml                       Dagster daemon } (Postgres: deploy/dagster.yaml)
#
# Configuration is DRAY_* variables and flags only (`dray broker --help`). Data lives in the /data volume, owned
# by the non-root user dray (uid 10001). HEALTHCHECK probes the broker's /readyz on DRAY_HTTP_LISTEN.
#
# Build (HEALTHCHECK needs the docker image format with podman):
#   docker build -t dray .
#   podman build --format docker --build-arg BASE_IMAGE=localhost/dray-base:bookworm -t dray .
# BASE_IMAGE is any Debian-like image with Python 3.11+ as python3 and the venv module (scripts/container-base.sh
# makes one without a registry). Every stage uses it, so the virtualenv's interpreter path holds in the final one.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- requirements
# The dependency list of pyproject.toml, alone: edits elsewhere in pyproject.toml keep the dependency layer cached.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /requirements.txt

# ---------------------------------------------------------------------------------------------- build
# /opt/dray: a virtualenv without pip holding the dependencies; /opt/dray-app: the project (on the venv's path
# through a .pth file). Kept apart so that a source change leaves the dependency layers, build and final, cached.
FROM ${BASE_IMAGE} AS build
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    PIP_CERT=${PIP_CERT}
RUN python3 -m venv /opt/pip && /opt/pip/bin/pip install -q --upgrade pip \
 && python3 -m venv --without-pip /opt/dray
WORKDIR /src

# Dependencies: rebuilt only when the dependency list or the image extras change.
COPY --from=requirements /requirements.txt requirements-project.txt
COPY deploy/requirements-image.txt ./
RUN /opt/pip/bin/pip --python /opt/dray/bin/python install -q -r requirements-project.txt -r requirements-image.txt \
 && site=$(/opt/dray/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && rm -rf "$site"/pyarrow/include "$site"/pyarrow/tests "$site"/pyarrow/src \
 && find "$site" \( -name '*.pyx' -o -name '*.pxd' \) -delete \
 && echo /opt/dray-app > "$site"/dray-app.pth

# The project itself, with no dependency resolution (all are in place), and a check of the whole set.
COPY pyproject.toml README.md ./
COPY dray_broker ./dray_broker
COPY dray_pipelines ./dray_pipelines
RUN /opt/pip/bin/pip --python /opt/dray/bin/python install -q --no-deps --target /opt/dray-app . \
 && /opt/pip/bin/pip --python /opt/dray/bin/python check

# ---------------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}
RUN useradd --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin dray \
 && mkdir -p /data /app /opt/dray/dagster \
 && chown dray:dray /data /app /opt/dray/dagster
COPY --from=build /opt/dray /opt/dray
COPY --from=build /opt/dray-app /opt/dray-app
COPY deploy/healthcheck.py /opt/dray/healthcheck.py
COPY deploy/dagster.yaml /opt/dray/dagster/dagster.yaml
COPY dagster_workspace.yaml /app/dagster_workspace.yaml

ENV PATH=/opt/dray-app/bin:/opt/dray/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    DRAY_DATA_DIR=/data \
    DRAY_LISTEN=0.0.0.0:9092 \
    DRAY_HTTP_LISTEN=0.0.0.0:9600 \
    DRAY_DAGSTER_HOST=0.0.0.0

WORKDIR /app
USER dray
VOLUME ["/data"]
EXPOSE 9092 9600 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["python", "/opt/dray/healthcheck.py"]
CMD ["dray", "broker"]
