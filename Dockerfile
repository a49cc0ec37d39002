# syntax=docker/dockerfile:1
# One image, two entry points: `xrayvision` (the default ENTRYPOINT: serve, migrate,
# import, ...) and `xrayvision-operator` (the Helm chart sets it as the command).
# tests/deploy/test_dockerfile.py lints this file with hadolint and runs the build
# stage's RUN steps in a fresh venv (no container engine runs on the CI machine).

FROM python:3.11.10-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY runtime ./runtime
COPY operator ./operator
# Wheels only (no compilers in either stage); versions from the lock file.
RUN python -m venv /opt/xrayvision \
 && /opt/xrayvision/bin/pip install --no-cache-dir --only-binary=:all: -c constraints.txt \
      '.[operator]' \
 && find /opt/xrayvision -name '__pycache__' -type d -prune -exec rm -rf {} +

FROM python:3.11.10-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="xrayvision" \
      org.opencontainers.image.description="AI-assisted X-ray triage: DICOM ingest, vision-model reports, FHIR, dashboard, Kubernetes operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/xrayvision/xrayvision"
COPY --from=build /opt/xrayvision /opt/xrayvision
COPY prompts /app/prompts
COPY probes /app/probes
COPY static /app/static
ENV PATH=/opt/xrayvision/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    XRAYVISION_SERVER_DATA_DIR=/data
WORKDIR /app
USER 10001:10001
EXPOSE 8080 11112
ENTRYPOINT ["xrayvision"]
CMD ["serve"]
