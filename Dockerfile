# One image for Prefect flow runs, the Dask scheduler and the Dask workers: same pins as `make`.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DASK_DISTRIBUTED__COMM__RETRY__COUNT=3
# ^ Dask's own retries of a dropped connection, with exponential backoff between
#   distributed.comm.retry.delay.min and .max, in the flow process, scheduler and workers alike.

WORKDIR /opt/fleetscore
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY scoring ./scoring
COPY flows ./flows
COPY cluster ./cluster
RUN pip install --no-deps . && useradd --create-home fleetscore
USER fleetscore
# No credentials here: pass AZURE_STORAGE_* at run time (work pool job variables, VM env).
CMD ["fleetscore", "--help"]
