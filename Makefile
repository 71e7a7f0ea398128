# sbx: the targets README.md and .ci/run use.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/sbx-dev/sbx/internal/cli.Version=$(VERSION)
PKGS_DEBIAN := qemu-system-x86 qemu-utils debootstrap xz-utils e2fsprogs cpio
TEST_TIMEOUT ?= 40m

.PHONY: all build deps deps-agents run test test-unit test-vm fuzz bench lint clean install agents-lock

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/sbx-agent ./cmd/sbx-agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/sbx ./cmd/sbx
	ln -sf sbx $(BIN)/git-remote-sbx

# deps installs the Debian/Ubuntu packages sbx needs, only those missing.
deps:
	@hack/install-deps.sh $(PKGS_DEBIAN)

# deps-agents adds npm (only when no npm is found), which installs the
# agent CLIs into the agents template with the host's registry settings.
deps-agents: deps
	@hack/install-deps.sh npm=npm

# agents-lock rewrites the agents template's npm lock file from the
# versions in internal/template/agents/package.json, recording no
# download addresses.
agents-lock:
	cd internal/template/agents && rm -f package-lock.json && \
	  npm install --package-lock-only --ignore-scripts --no-audit --no-fund --omit-lockfile-registry-resolved

# run: everything a fresh machine needs, then a shell in a sandbox on the
# current folder (the kernel and the default template are prepared on
# first use, with progress).
run: deps build
	$(BIN)/sbx run shell "$(CURDIR)"

install: build
	install -m 0755 $(BIN)/sbx $(BIN)/sbx-agent /usr/local/bin/
	ln -sf sbx /usr/local/bin/git-remote-sbx

# test: unit tests with -race and the fuzz targets' seed corpora (which
# `go test` runs as ordinary tests), then the VM tests (real QEMU, TCG
# here) on their own, one VM test at a time: they build the shell and
# agents templates once into the shared cache.
UNIT_PKGS = $$($(GO) list ./... | grep -v '/integration$$')
test: build
	$(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)
	$(GO) test -count=1 -p 1 -timeout $(TEST_TIMEOUT) -v ./integration/

test-unit:
	$(GO) test -race -count=1 $(UNIT_PKGS)

test-vm: build
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./integration/

# fuzz runs each fuzz target live for FUZZTIME (not part of CI).
FUZZTIME ?= 60s
fuzz:
	@$(GO) list -f '{{.ImportPath}}' ./... | while read -r pkg; do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; done

# bench measures cold and snapshot starts, the exec round trip, proxied
# HTTPS, workspace I/O and memory, each against a baseline measured in the
# same run (docs/benchmarks.md); the integration run ends with a table, and
# the figures go to bin/bench.json. SBX_BENCH_TB_SIZES=32,64,128,256 adds
# the TCG translation cache study.
bench: build
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 2s ./internal/proxy/
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 5x ./internal/wsdiff/
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./internal/supervisor/
	SBX_BENCH_JSON=$(BIN)/bench.json $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./integration/

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
