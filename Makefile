# The two commands a new user runs: `make demo` and `make test`. Both install first,
# and are quick when everything is already there.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEB_STAMP := $(VENV)/.debs
# What the project needs from Debian: nft for box firewalls, iproute2 for netns tools,
# PostgreSQL for the repository tests, ping for people poking at boxes, curl for the demo,
# python3-venv where python3 is Debian's own, Prometheus and node-exporter for the Visible Fabric.
# Service composition: podman + runc run containers, mmdebstrap builds their images (no registry),
# and the smart-energy pattern's packages (mosquitto, paho-mqtt, boto3, prometheus-client) serve
# the process runtime on the host; mosquitto-clients lets a person publish a fault from a box.
# Remote hosts (the ssh UnderCloud): openssh-server runs the simulated hosts' sshd in tests,
# wireguard-tools + wireguard-go encrypt the underlay between sites (userspace where the kernel
# has no WireGuard), tcpdump lets the tests look at what crosses the WAN link, sudo serves a lab
# host's user other than root (cloud images log in as one; the tests make it inside a lab host).
DEB_PACKAGES := nftables iproute2 iputils-ping procps postgresql curl python3-venv prometheus prometheus-node-exporter \
	podman runc mmdebstrap util-linux mosquitto mosquitto-clients python3-paho-mqtt python3-boto3 python3-prometheus-client bubblewrap \
	openssh-server openssh-client wireguard-tools wireguard-go tcpdump sudo
PORT ?= 6125

.PHONY: install debs demo demo-stop test bench

install: debs $(STAMP)

debs: $(DEB_STAMP)

$(DEB_STAMP): Makefile
	@mkdir -p $(VENV)
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	else echo "not root: skipping Debian packages ($(DEB_PACKAGES)); the local UnderCloud needs root"; fi
	@touch $@

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

demo: install
	@bash scripts/demo.sh "$(PORT)"

test: install
	@bash scripts/test.sh

bench: install
	$(BIN)/python bench/create_delete.py
	$(BIN)/python bench/datalake.py
	$(BIN)/python bench/fabric.py
	$(BIN)/python bench/compose.py
	$(BIN)/python bench/amplification.py
	$(BIN)/python bench/streams.py
	$(BIN)/python bench/coldstart.py
	$(BIN)/python bench/remote.py
	$(BIN)/python bench/clouds.py

# delete every OverCloud of the demo Tower (nothing left behind) and stop it
demo-stop:
	@bash scripts/demo-stop.sh "$(PORT)"
