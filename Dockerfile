# syntax=docker/dockerfile:1
# One image, two entry points: `xrayvision` (default) and `xrayvision-operator`.
# The packaging issue hardens this further (hadolint, a test of the install steps).

FROM python:3.11.10-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY runtime ./runtime
COPY operator ./operator
RUN python -m venv /opt/xrayvision \
 && /opt/xrayvision/bin/pip install --no-cache-dir -c constraints.txt '.[operator]'

FROM python:3.11.10-slim-bookworm
LABEL org.opencontainers.image.title="xrayvision" \
      org.opencontainers.image.description="AI-assisted X-ray triage: DICOM ingest, vision-model reports, FHIR, dashboard" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/xrayvision /opt/xrayvision
COPY prompts /app/prompts
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
