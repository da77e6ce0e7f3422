# fleetscore: `make demo` scores a generated fleet on this machine; `make test` runs the suite.
# Everything installs into this folder (.venv, node_modules) from requirements.lock and package-lock.json.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FLEETSCORE := $(BIN)/fleetscore
STORE ?= data
DEVICES ?= 250

# Prefect and Dask keep their state and scratch files inside the project.
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export DASK_TEMPORARY_DIRECTORY := $(CURDIR)/.dask-tmp

# The demo scores the last full hour, on models trained on the two hours before it.
HOUR := $(shell date -u -d '1 hour ago' +%Y-%m-%dT%H)
TRAIN_END := $(shell date -u -d '2 hours ago' +%Y-%m-%dT%H)

.PHONY: demo demo-azurite test faults bench lock clean

$(BIN)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

demo: $(BIN)/.installed
	$(FLEETSCORE) generate --store $(STORE) --devices $(DEVICES) --hours 3 --end $(HOUR) --realistic
	$(FLEETSCORE) train --store $(STORE) --end $(TRAIN_END) --hours 2
	$(FLEETSCORE) score --store $(STORE) --hour $(HOUR)

# The same demo with Azure Blob Storage emulated by Azurite on 127.0.0.1 (no Azure account needed).
# The key is Azurite's public, documented development key, not a secret.
AZURITE_PORT ?= 10000
AZURITE_CONNECTION := DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$(AZURITE_PORT)/devstoreaccount1;

demo-azurite: $(BIN)/.installed node_modules/.installed
	mkdir -p .azurite
	@node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort $(AZURITE_PORT) --location .azurite \
	  --skipApiVersionCheck --loose --disableTelemetry --silent & pid=$$!; \
	trap "kill $$pid" EXIT; sleep 2; \
	AZURE_STORAGE_CONNECTION_STRING='$(AZURITE_CONNECTION)' $(MAKE) demo STORE=az://fleetscore/demo

test: $(BIN)/.installed node_modules/.installed
	$(BIN)/pytest

# fleetscore against the compute floor and the alternatives on one generated fleet (README "Performance"),
# then the alerts' precision and recall against injected anomalies, clean and realistic (README "Accuracy").
# BENCH_ARGS=--quick for 1,000 devices; BENCH_ARGS="--devices 100000 --contenders dask-batches,flow" for the floors and
# the flow at scale (its fleet is made once, about 7 minutes and 4 GB); benchmarks.run --help and benchmarks.accuracy --help for every flag.
BENCH_ARGS ?=
ACCURACY_ARGS ?=
bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.accuracy $(ACCURACY_ARGS)
	$(BIN)/python -m benchmarks.model_load   # load cost a model: joblib pickles against the code-free arrays

# The fault suite alone, with its table (it also runs in `make test`).
faults: $(BIN)/.installed node_modules/.installed
	$(BIN)/pytest tests/faults

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet '.[test,azure,bench]'
	{ sed -n '1,3p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^fleetscore'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

clean:
	rm -rf $(VENV) node_modules .prefect .dask-tmp .azurite $(STORE)
