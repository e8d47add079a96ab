# kez-chat. `make run` serves a chat server on http://localhost:6969;
# `make test` runs every test. CI runs .ci/run, which calls `make test`.

GO        ?= go
BIN       ?= bin/kezchat
BENCH_BIN ?= bin/kezchat-bench
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE      ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
# Evaluated once: every binary one make builds carries the same stamp
# (the e2e test compares the image's `kezchat version` with bin/kezchat's).
VERSION   := $(VERSION)
COMMIT    := $(COMMIT)
DATE      := $(DATE)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
FUZZTIME  ?= 10s

.PHONY: all build run test check vet fmt-check unit e2e fuzz bench clean manifests generate check-generated bench-operator bench-backup bench-group bench-anchor
.PHONY: web web-test web-e2e bench-web image plugin plugin-dist

all: build plugin

build: web
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/kezchat

## plugin: the kubectl plugin, bin/kubectl-kezchat (`kubectl kezchat` once on the PATH);
## a client tool, not in the image. Its krew manifest template is hack/krew/kezchat.yaml.
PLUGIN_BIN ?= bin/kubectl-kezchat
plugin:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(PLUGIN_BIN) ./cmd/kubectl-kezchat

## plugin-dist: the plugin's krew archives for each platform of hack/krew/kezchat.yaml,
## in bin/krew, with their SHA-256 sums to fill the manifest in
PLUGIN_PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64
plugin-dist:
	rm -rf bin/krew && mkdir -p bin/krew
	for p in $(PLUGIN_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; ext=; [ $$os = windows ] && ext=.exe; \
		dir=bin/krew/kubectl-kezchat_$${os}_$${arch}; mkdir -p $$dir || exit 1; \
		GOOS=$$os GOARCH=$$arch $(MAKE) -s plugin PLUGIN_BIN=$$dir/kubectl-kezchat$$ext || exit 1; \
		tar -C $$dir -czf $$dir.tar.gz kubectl-kezchat$$ext && rm -rf $$dir || exit 1; \
	done
	cd bin/krew && sha256sum *.tar.gz

## run: a chat server with laptop defaults (database ./kez-chat.db)
run: build
	./$(BIN) server

## test: every check and test CI runs
test: check unit e2e fuzz web-test web-e2e

## web: the web app in web/dist (npm ci, vite build), skipped when up to date;
## `build` embeds it. Without it the binary serves a built-in page at /.
web:
	@bash web/scripts/make-web.sh

## web-test: vitest (crypto, signing, protocol, state) and svelte-check
web-test: web
	cd web && npx vitest run && npx svelte-check --tsconfig ./tsconfig.json --fail-on-warnings

## web-e2e: Debian's chromium (/usr/bin/chromium) drives the embedded app
## against bin/kezchat and its real database; screenshots in web/e2e/artifacts
web-e2e: build
	cd web && KEZCHAT_BIN=$(abspath $(BIN)) npx vitest run --config vitest.e2e.config.ts

## bench-web: the web app's load time with 100,000 messages in its history
## (docs/benchmarks.md), in Debian's chromium against bin/kezchat;
## BENCH_WEB_ARGS="--layout legacy" seeds the single-document layout before issue 17
bench-web: build
	cd web && KEZCHAT_BIN=$(abspath $(BIN)) node scripts/bench-history.mjs $(BENCH_WEB_ARGS)

check: fmt-check vet check-generated

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# The operator's tests run against a real kube-apiserver and etcd (envtest),
# built once by k8s-tools.
unit: k8s-tools versitygw
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) $(GO) test -race -count=1 $$($(GO) list ./... | grep -v '/e2e$$')
	@# Allocation counts are only true without the race detector, which
	@# makes sync.Pool drop items; those tests skip under -race and run here.
	$(GO) test -count=1 -run 'Allocates' ./server/...

## e2e: helm install and kubectl apply -k on a local control plane (kube-apiserver,
## etcd, kube-controller-manager, kube-scheduler, kwok), a KezChat from apply to
## Ready, a rollout, helm upgrade, deletion; the image of `make image` running the
## operator's pods under runc, pushed with the chart to a local OCI registry and
## installed from it, and run by a real node (kubelet, containerd, runc) beside kwok;
## as root
e2e: build image k8s-tools versitygw
	KEZCHAT_BIN=$(abspath $(BIN)) KEZCHAT_IMAGE=$(abspath $(IMAGE_DIR)) KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) $(GO) test -count=1 ./e2e/

# Each fuzz target runs briefly; the seed corpora run in `unit` as well.
fuzz:
	GO=$(GO) bash hack/fuzz.sh FuzzCanonicalize ./server/signing/ $(FUZZTIME)
	GO=$(GO) bash hack/fuzz.sh FuzzParseAuth ./server/signing/ $(FUZZTIME)
	GO=$(GO) bash hack/fuzz.sh FuzzSignedVerify ./server/signing/ $(FUZZTIME)
	GO=$(GO) bash hack/fuzz.sh FuzzEd25519VerifyMatchesStdlib ./server/signing/ $(FUZZTIME)
	GO=$(GO) bash hack/fuzz.sh FuzzDecodeSigned ./server/ $(FUZZTIME)
	GO=$(GO) bash hack/fuzz.sh FuzzDecodeMessagePayload ./server/ $(FUZZTIME)
	GO=$(GO) bash hack/fuzz.sh FuzzRequestBodies ./server/httpapi/ $(FUZZTIME)
	GO=$(GO) bash hack/fuzz.sh FuzzKeyDocuments ./server/httpapi/ $(FUZZTIME)
	GO=$(GO) bash hack/fuzz.sh FuzzDecodeForward ./server/jsstore/ $(FUZZTIME)
	GO=$(GO) bash hack/fuzz.sh FuzzFederationBodies ./server/httpapi/ $(FUZZTIME)

## image: the kezchat image without a Docker engine: the Dockerfile's
## files, user and entrypoint for linux/amd64 and linux/arm64 in one OCI
## index, an OCI image layout in $(IMAGE_DIR), an SPDX SBOM beside it.
IMAGE_DIR ?= bin/image
image: web
	for arch in amd64 arm64; do \
		GOOS=linux GOARCH=$$arch $(MAKE) -s -o web build BIN=$(IMAGE_DIR)-build/$$arch/kezchat \
			VERSION=$(VERSION) COMMIT=$(COMMIT) DATE=$(DATE) || exit 1; \
	done
	$(GO) run ./hack/image --out $(IMAGE_DIR) \
		--bin linux/amd64=$(IMAGE_DIR)-build/amd64/kezchat --bin linux/arm64=$(IMAGE_DIR)-build/arm64/kezchat \
		--version $(VERSION) --commit $(COMMIT) --created $(DATE) \
		--ca-certs /etc/ssl/certs/ca-certificates.crt --npm-lock web/package-lock.json

## bench: the figures in docs/benchmarks.md. The load generator is a binary
## of its own (cmd/kezchat-bench): it runs bin/kezchat's server as it ships.
bench: build
	$(GO) build -trimpath -o $(BENCH_BIN) ./cmd/kezchat-bench
	./$(BENCH_BIN) --kezchat $(BIN) $(BENCH_ARGS)

## bench-group: a message to a 100-member group, every member streaming (POST /v1/batch:
## requests/s, delivery of every copy), and 25 MiB attachments up and down (docs/benchmarks.md)
bench-group: build
	$(GO) build -trimpath -o $(BENCH_BIN) ./cmd/kezchat-bench
	./$(BENCH_BIN) group --kezchat $(BIN) $(BENCH_GROUP_ARGS)

## bench-anchor: kezchat against Centrifugo (make centrifugo) under the same load and client:
## 1,000 streams, 64 and 8 closed-loop senders, 300-byte messages, 10 s a phase, 3 rounds,
## side by side with the ratio, CPU per message and RSS (docs/benchmarks.md)
bench-anchor: build centrifugo
	$(GO) build -trimpath -o $(BENCH_BIN) ./cmd/kezchat-bench
	./$(BENCH_BIN) anchor --kezchat $(BIN) --centrifugo $(CENTRIFUGO_BIN) $(BENCH_ANCHOR_ARGS)

## bench-operator: the built `kezchat operator` as a process of its own against a real
## API server (envtest), per size in KEZ_BENCH_KEZCHATS (default 200,1000): KezChats
## created while it runs, a restart, more after it, hand edits put back, peak RSS
bench-operator: build k8s-tools
	KEZCHAT_BIN=$(abspath $(BIN)) KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) $(GO) test -run='^$$' -bench=OperatorBinary -benchtime=1x -timeout=60m ./controllers/

## bench-backup: backup and restore of a 100,000-message chat database to versitygw,
## and the store's write throughput with and without a backup running (docs/benchmarks.md)
bench-backup: versitygw
	$(GO) test -run='^$$' -bench=BackupRestore100k -benchtime=1x -timeout=30m ./server/backup/

CONTROLLER_GEN = $(GO) tool controller-gen

## manifests: the CRD and the operator's ClusterRole, from the markers in api/ and controllers/,
## and the Helm chart's copies of them (and of config/rbac's rules)
manifests:
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths=./api/... paths=./controllers/... \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	$(GO) run ./hack/chartgen

## generate: DeepCopy methods of the API types
generate:
	$(CONTROLLER_GEN) object paths=./api/...

# Generated files must be what the code generates: regenerate, and fail if
# that changed anything (work in progress elsewhere in the tree is fine).
check-generated:
	@state() { git status --porcelain -- config api charts; git diff -- config api charts | cksum; }; \
	before=$$(state); \
	$(MAKE) -s manifests generate || exit 1; \
	if [ "$$(state)" != "$$before" ]; then \
		echo "generated files were stale; make manifests generate rewrote them:"; git status --short -- config api charts; exit 1; \
	fi

clean:
	rm -rf bin

# Kubernetes binaries for tests (kube-apiserver and etcd for envtest, kubectl,
# kube-controller-manager, kube-scheduler), built from the pinned modules in
# hack/tools/*/go.mod into a per-version cache outside the repository
# (~/.cache/kez-chat/k8s/<version>/bin, or $KEZ_TOOLS_DIR). The first build
# takes minutes; later runs find them built and return at once. A test target
# that starts envtest depends on k8s-tools and runs
#   KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) $(GO) test ...
ENVTEST_ASSETS ?= $(shell bash hack/tools/install-k8s-tools.sh --print-dir)

.PHONY: k8s-tools versitygw centrifugo
k8s-tools:
	bash hack/tools/install-k8s-tools.sh

# versitygw, the real S3 server (POSIX backend) the backup tests run
# (server/backup/s3test), built the same way into the same cache; k8s-tools
# builds it too. Tests find it by running the script, or at $KEZ_VERSITYGW.
versitygw:
	bash hack/tools/install-k8s-tools.sh versitygw

# dashboard-shot: docs/monitoring-dashboard.png, the Grafana dashboard's
# panels (monitoring/dashboard.json) drawn from a real Prometheus scraping
# kezchat under load (hack/dashboard-shot; Prometheus built into the tool
# cache like the rest). Not part of `make test`.
.PHONY: dashboard-shot
dashboard-shot:
	bash hack/tools/install-k8s-tools.sh prometheus
	$(GO) run ./hack/dashboard-shot --out docs/monitoring-dashboard.png $(DASHBOARD_SHOT_ARGS)

# Centrifugo, the real-time server `make bench-anchor` measures kezchat
# against, built the same way into the same cache. Only that bench needs it:
# k8s-tools (and so CI) does not build it.
CENTRIFUGO_BIN ?= $(shell bash hack/tools/install-k8s-tools.sh --print-dir)/centrifugo
centrifugo:
	bash hack/tools/install-k8s-tools.sh centrifugo
