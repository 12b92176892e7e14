# Archivist's HTTP API and web UI, with the bundled embedding model inside: no download at run time.
#   docker build -t archivist .
#   docker run -p 8000:8000 -v archivist-data:/data archivist
# compose.yaml adds the persistent volume and an optional `archivist worker`; docs/deploy.md has the rest.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the install reads (.dockerignore keeps the rest out of the context).
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/install.sh scripts/install.sh
COPY src src
# The same script `make install` runs (with --dev there): one set of install steps, tested by every `make test`.
RUN scripts/install.sh /opt/venv

FROM python:3.11-slim
# A fixed uid, so a volume's files have the same owner in every container started from this image.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/archivist archivist \
    && mkdir /data && chown archivist:archivist /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ARCHIVIST_STORE=sqlite:////data/archivist.db
USER archivist
WORKDIR /data
VOLUME /data
EXPOSE 8000
# Ready means the store answers and its schema is current, not just that the process is up.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["archivist", "serve", "--host", "0.0.0.0", "--port", "8000"]
