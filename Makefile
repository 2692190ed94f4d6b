# The two commands of the README: `make main` (install, train the default model, evaluate,
# export, print the test accuracy) and `make test` (install, run the test suite).
PYTHON ?= python3
VENV ?= .venv
CORE_VENV ?= .venv-core
RUN ?= runs/default
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: main test install system-deps lint notebook pi-deps pi-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[train,serve,test,camera]'
	touch $@

# What a Raspberry Pi gets from `pip install digitpi`: no torch. The tests prove the runtime works there.
$(CORE_VENV)/.installed: pyproject.toml $(shell find src/digitpi -type f -not -path "*/__pycache__/*")
	$(PYTHON) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/pip install -q --upgrade pip
	$(CORE_VENV)/bin/pip install -q .
	touch $@

install: $(VENV)/.installed

# Debian packages the tests use: Chromium for the browser test, Fashion-MNIST for the data layer,
# systemd-analyze to verify the unit of `digitpi service`. Installed by root as is, by anyone else through
# sudo; without sudo, make stops and prints the one command to run first.
APT_PACKAGES = chromium dataset-fashion-mnist systemd
CHROMIUM ?= /usr/bin/chromium
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
SYSTEMD_ANALYZE ?= /usr/bin/systemd-analyze
system-deps:
	@if [ ! -x $(CHROMIUM) ] || [ ! -d $(FASHION_MNIST) ] || [ ! -x $(SYSTEMD_ANALYZE) ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q $(APT_PACKAGES); \
		elif command -v sudo >/dev/null; then \
			echo "make test: installing $(APT_PACKAGES) with sudo"; \
			sudo apt-get update -q && sudo apt-get install -y -q $(APT_PACKAGES); \
		else echo "make test needs $(APT_PACKAGES) from Debian; as root, run first:"; \
			echo "  apt-get install $(APT_PACKAGES)"; exit 1; fi; fi

main: $(VENV)/.installed
	$(VENV)/bin/digitpi train --out $(RUN)
	$(VENV)/bin/digitpi export $(RUN)

# The course notebook executed in place (its defaults: 2 epochs on all 60,000 images, minutes on a CPU). Its
# outputs are committed for people who read it on the web; tests/test_notebook.py checks they match its sources.
notebook: $(VENV)/.installed
	$(VENV)/bin/python examples/run_notebook.py

test: $(VENV)/.installed $(CORE_VENV)/.installed system-deps
	$(VENV)/bin/ruff check .
	DIGITPI_CORE_PYTHON=$(CORE_VENV)/bin/python $(VENV)/bin/pytest -q -n auto --dist loadfile

# The Pi side on emulated ARM (README, "On the Raspberry Pi"): Debian bookworm arm64 and armhf userlands
# run by qemu-user. Userlands and wheels are cached in PI_CACHE, keyed by what they hold; the model is
# the `fast` recipe trained here, or DIGITPI_PI_MODEL=EXPORT_DIR.
PI_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/digitpi/pi

pi-deps:
	@if ! command -v qemu-aarch64-static >/dev/null || ! command -v qemu-arm-static >/dev/null; then \
		apt-get update -q && apt-get install -y -q qemu-user-static; fi

pi-test: $(VENV)/.installed pi-deps
	DIGITPI_PI_CACHE=$(PI_CACHE) $(VENV)/bin/pytest -q -p no:cacheprovider pi
