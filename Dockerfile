# One image for Prefect workers and flow runs: `prefect worker start …` or `promptbatch run …`.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY workers workers
COPY flows flows
RUN /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 promptbatch
COPY --from=build /opt/venv /opt/venv
COPY --chown=promptbatch prefect.yaml /opt/promptbatch/prefect.yaml
COPY --chown=promptbatch jobs /opt/promptbatch/jobs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PROMPTBATCH_HOME=/opt/promptbatch \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
USER promptbatch
WORKDIR /opt/promptbatch
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["promptbatch", "--help"]
