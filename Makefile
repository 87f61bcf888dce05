# Two set-up commands (README): `make run` and `make test`. Both work from a clean clone on Debian.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install deps-debian typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests talk to on loopback: NSD (authoritative DNS) and swaks (a real SMTP client).
# Installed only when missing and only as root; elsewhere the tests that need them are skipped with a reason.
deps-debian:
	@if [ "$$(id -u)" = "0" ] && ! command -v nsd >/dev/null 2>&1; then \
		echo "installing Debian packages: nsd"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nsd >/dev/null; \
	fi

run: $(STAMP)
	$(BIN)/relay

# mypy --strict over relay/ and admin/ (pyproject.toml), then the whole suite.
typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) deps-debian typecheck
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache
