# sendq: `make help` lists the targets.
GO ?= go
# An execution count, not a duration: a duration -fuzztime races Go 1.26's
# fuzz coordinator at the deadline and fails with a bare "context deadline
# exceeded" and no input (go.dev/issue/75804, fixed in Go 1.27).
FUZZTIME ?= 20000x

.PHONY: help run test test-short fuzz-short chaos chaos-short vet lint build bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: ## run sendq (API + worker) on embedded Redis and an .eml outbox
	$(GO) run ./cmd/sendq serve

test: ## the whole suite: installs redis-server, chromium, python3, python3-dkim, spamassassin, promtool, postfix if missing; go test -race
	./scripts/ensure-test-deps.sh
	SENDQ_TEST_REQUIRE_REDIS=1 SENDQ_TEST_REQUIRE_BROWSER=1 SENDQ_TEST_REQUIRE_PYTHON=1 SENDQ_TEST_REQUIRE_DKIMPY=1 \
	  SENDQ_TEST_REQUIRE_SPAMASSASSIN=1 SENDQ_TEST_REQUIRE_PROMTOOL=1 SENDQ_TEST_REQUIRE_POSTFIX=1 $(GO) test -race -count=1 ./...

test-short: ## go test without -race (faster, for a quick loop)
	$(GO) test -count=1 ./...

fuzz-short: ## run every fuzz target for FUZZTIME executions each (default 20000x)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 3s $$pkg; \
	  done; \
	done

chaos: ## the fault-injection suite, full form (real processes; prints the reliability table)
	./scripts/ensure-test-deps.sh
	SENDQ_TEST_REQUIRE_REDIS=1 CHAOS_REPORT=chaos-report.md $(GO) test -tags chaos -count=1 -v -timeout 30m ./internal/chaos/

chaos-short: ## the fault suite in its bounded form (CI)
	./scripts/ensure-test-deps.sh
	SENDQ_TEST_REQUIRE_REDIS=1 CHAOS_SHORT=1 CHAOS_REPORT=chaos-report.md $(GO) test -tags chaos -count=1 -v -timeout 15m ./internal/chaos/

vet: ## gofmt, go vet and go mod tidy checks
	@test -z "$$(gofmt -l . | tee /dev/stderr)"
	$(GO) vet ./...
	$(GO) mod tidy -diff

build: ## build bin/sendq
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/sendq ./cmd/sendq

bench: ## Go benchmarks of the hot paths
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean: ## remove build output and the outbox
	rm -rf bin sendq-outbox
