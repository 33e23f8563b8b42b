# vmvault — see README.md. Two commands set up and prove a fresh machine:
#   make demo    back up a sample VM, mount it, copy a file out
#   make test    the whole test suite (installs Debian tools when run as root)
GO        ?= go
BIN       := bin/vmvault
GOFLAGS   ?=
TESTFLAGS ?= -timeout 25m
FUZZTIME  ?= 60s

.PHONY: all build test vet deps demo bench bench-micro fuzz crossbuild clean

all: build

build:
	$(GO) build $(GOFLAGS) -o $(BIN) ./cmd/vmvault

deps:
	@./scripts/deps.sh

vet:
	@test -z "$$(gofmt -l . | grep -v '^testdata/out/')" || (gofmt -l . ; echo 'gofmt needed'; exit 1)
	$(GO) vet ./...

# The cgofuse adapter (Windows/macOS) runs the same FUSE suite on Linux
# through libfuse3, which needs the fuse3 build tag.
test: deps vet build
	$(GO) test $(GOFLAGS) $(TESTFLAGS) ./...
	$(GO) test $(GOFLAGS) $(TESTFLAGS) -tags fuse3 ./mount/cgofuse/

# Cross-builds prove the Windows and macOS adapters compile (no cgo needed).
crossbuild:
	$(GO) build -tags fuse3 -o /dev/null ./...
	GOOS=windows CGO_ENABLED=0 $(GO) build -o /dev/null ./...
	GOOS=darwin CGO_ENABLED=0 $(GO) build -o /dev/null ./...

demo: deps build
	@./scripts/demo.sh

# The fleet benchmark (vmvault bench --help): 4 VMs x 8 GiB, 3 churn
# generations, every stage, restic and borg when installed. Needs root and
# /dev/fuse; 8 minutes on 2 cores with both peers (README, Performance).
# BENCHFLAGS adds flags.
BENCHFLAGS ?=
bench: deps build
	@mkdir -p bench/out
	$(BIN) bench --json bench/out/bench.json --chart bench/out/bench.svg $(BENCHFLAGS)

# The go test benchmarks of each package, with GOMAXPROCS at twice the
# CPUs as vmvault runs (engine.IOProcs: a goroutine blocked in a write
# keeps its P). BENCHPROCS=2,4 compares.
BENCHPROCS ?= $(shell echo $$((2 * $$(nproc))))
bench-micro: deps build
	$(GO) test -run '^$$' -bench . -benchtime 3x -cpu $(BENCHPROCS) ./vhdxfs/... ./chunkstore/... ./engine/... ./mount/...

# Every fuzz target for FUZZTIME each, one at a time (the machine has 2 cores).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1000x $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin testdata/out
