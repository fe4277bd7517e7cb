# Everything the project needs is installed by these targets into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench clean tools

# The chart tests (tests/test_helm.py) run helm, built from its Go module into .tools/bin;
# the stamp names the version, so a second run costs nothing and a version bump rebuilds.
HELM_VERSION := v3.22.0
HELM_STAMP := .tools/.helm-$(HELM_VERSION)
# What helm's own release build stamps in: its version, and the Kubernetes version of its
# client libraries (k8s.io/* v0.37), which is helm template's default cluster version.
HELM_LDFLAGS := -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach pkg,pkg/chartutil pkg/lint/rules,\
	-X helm.sh/helm/v3/$(pkg).k8sVersionMajor=1 -X helm.sh/helm/v3/$(pkg).k8sVersionMinor=37)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The demo needs the runtime and the embedded broker only, not the test and MLflow stack.
DEMO_STAMP := $(VENV)/.installed-demo

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $(DEMO_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check bridge tests examples bench
	$(BIN)/ruff format --check bridge tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The observability examples' tests (tests/test_observability.py) check the alert rules and
# the dashboard's queries with promtool, built from Prometheus' Go module the same way;
# remove_all_sd leaves out the service-discovery plugins (cloud SDKs) that rules never need
# (a cold build here: about 5 min; with them 18 min, module downloads included).
PROMTOOL_VERSION := v0.316.0
PROMTOOL_STAMP := .tools/.promtool-$(PROMTOOL_VERSION)

$(HELM_STAMP):
	mkdir -p .tools/bin
	GOBIN=$(CURDIR)/.tools/bin GOFLAGS=-buildvcs=false \
		go install -ldflags '$(HELM_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	rm -f .tools/.helm-*
	touch $@

$(PROMTOOL_STAMP):
	mkdir -p .tools/bin
	GOBIN=$(CURDIR)/.tools/bin GOFLAGS=-buildvcs=false \
		go install -tags remove_all_sd github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	rm -f .tools/.promtool-*
	touch $@

tools: $(HELM_STAMP) $(PROMTOOL_STAMP)

test: lint typecheck tools
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
