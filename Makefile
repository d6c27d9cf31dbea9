# The README's commands. `make test` is what CI runs.
GO ?= go

.PHONY: all build test test-long lint fuzz bench demo

all: build

build:
	$(GO) build -o bin/portico ./cmd/portico

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The whole suite, race detector on; a few minutes on two cores.
test: lint
	$(GO) test -race -count=1 -timeout 15m ./...

# Long matrices (rate-limit accuracy across algorithms and modes, soak-style runs).
test-long: lint
	PORTICO_LONG=1 $(GO) test -race -count=1 -timeout 60m ./...

demo:
	$(GO) run ./cmd/portico demo

bench:
	$(GO) run ./bench
