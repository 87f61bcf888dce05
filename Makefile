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

# Debian packages the tests talk to: NSD (authoritative DNS on loopback), LibreOffice Calc and
# poppler's pdftotext (the Excel hand-over and the CSV opened as a person opens them), and the fonts
# the hand-over is printed with, and Chromium with its driver (the settings page tried in a real
# browser), and PostgreSQL (the store's second backend: tests/postgres.py starts a throwaway cluster in
# a temporary directory and stops it; nothing uses a system-wide server). Installed as root when
# missing. `make test` then requires them: a test whose peer is missing fails
# (ACCOUNTON_REQUIRE_PEERS=1) instead of hiding a broken install.
DEBIAN_PACKAGES := nsd libreoffice-calc-nogui poppler-utils fonts-dejavu-core fonts-liberation2 chromium chromium-driver postgresql

deps-debian:
	@missing=""; for pkg in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "missing Debian packages:$$missing (run make test as root, or apt-get install them)"; \
		fi; \
	fi

run: $(STAMP)
	$(BIN)/relay

# mypy --strict over relay/ and admin/ (pyproject.toml), then the whole suite.
typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) deps-debian typecheck
	ACCOUNTON_REQUIRE_PEERS=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache
