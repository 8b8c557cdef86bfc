# tptoken: Caddy plugin that injects Douyin open-platform tokens.
GO          ?= go
GOBIN       ?= $(shell $(GO) env GOPATH)/bin
STATICCHECK ?= $(GOBIN)/staticcheck
STATICCHECK_VERSION ?= v0.8.2

.PHONY: test vet staticcheck tools build build-sandbox run run-check check-deployment test-compat fmt bench bench-load bench-scale bench-instructions

## test: vet, staticcheck and every test with the race detector
test: vet staticcheck
	$(GO) test -race -count=1 ./...

vet:
	@unformatted="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

staticcheck: tools
	$(STATICCHECK) ./...

tools:
	@test -x $(STATICCHECK) || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## build: the production Caddy (standard modules + tptoken, no emulator), without xcaddy
build:
	$(GO) build -o bin/caddy ./cmd/caddy

## build-sandbox: Caddy with tptoken and the platform emulator (make run, bench-load)
build-sandbox:
	$(GO) build -o bin/caddy-sandbox ./cmd/caddy-sandbox

## run: build the sandbox Caddy and start the sandbox (examples/sandbox.Caddyfile): the platform
## emulator, tptoken in front of it, a token injected end to end; Ctrl-C stops it
run:
	GO=$(GO) bash scripts/run-demo.sh

## run-check: the same demo, stopped once it has shown an injected token (CI runs it)
run-check:
	GO=$(GO) bash scripts/run-demo.sh --check

## check-deployment: the commands of docs/deployment.md this machine can run (CI runs
## it): production build, storage key, Caddyfile.example, systemd unit, the
## Dockerfile's build steps, promtool on the alert rules (scripts/check-deployment.sh)
check-deployment:
	GO=$(GO) bash scripts/check-deployment.sh

## test-compat: the official Douyin SDK for Node.js (compat/package.json), unmodified
## and verified byte for byte, against tptoken serving the platform's hosts over HTTPS,
## in a private network namespace (compat/run.sh; needs root, Node >= 18 and npm)
test-compat:
	GO=$(GO) bash compat/run.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

## bench: the Go benchmarks (handler, Token, query editing, response inspection,
## a request through Caddy), COUNT runs each, medians and spread (scripts/bench.sh)
bench:
	GO=$(GO) bash scripts/bench.sh

## bench-load: plain reverse_proxy against tptoken in one Caddy, wrk in alternating
## rounds: req/s, p50/p99, CPU per request and the ratios (scripts/bench-load.sh)
bench-load:
	GO=$(GO) bash scripts/bench-load.sh

## bench-scale: 10,000 cold authorizers, 100,000 records (renewal rate, start-up,
## first sweep), memory per cached authorizer, a 1,000-request stampede (scripts/bench-scale.sh)
bench-scale:
	GO=$(GO) bash scripts/bench-scale.sh

## bench-instructions: instructions per request through Caddy under callgrind,
## steady where time is not (scripts/bench-instructions.sh; needs valgrind)
bench-instructions:
	GO=$(GO) bash scripts/bench-instructions.sh
