# ggufprune build. llama.cpp and ggml come from the ollama Go module (cgo);
# third_party/ holds links to their headers in the module cache.

GO       ?= go
BIN      := bin/ggufprune
# Fuzz budgets as counts of executions (about 10 s each on the 2-core VM):
# a -fuzztime duration races the Go 1.26 fuzz coordinator's deadline and can
# fail with "context deadline exceeded" and no failing input (golang/go#75804).
FUZZ_NEWFILE   ?= 30000x
FUZZ_PARSELIST ?= 400000x

# SIMD: ggml builds scalar code without -march, 5-9x slower. Native by
# default; PORTABLE=1 builds for a baseline every x86-64 machine of the last
# decade runs (x86-64-v3: AVX2, FMA, F16C), or
# set MARCH yourself (e.g. MARCH=x86-64-v3, MARCH=armv8.2-a).
ifeq ($(PORTABLE),1)
  ifeq ($(shell uname -m),x86_64)
    MARCH ?= x86-64-v3
  else
    MARCH ?= armv8-a
  endif
else
  MARCH ?= native
endif
SIMD_FLAGS := -O3 -march=$(MARCH)
# ggml-cpu.cpp calls its AMX buffer type when the compiler targets AMX, but the
# ollama module's cgo package does not compile ggml-cpu/amx/: on a CPU with
# AMX, -march=native would not link. The AMX path only serves quantized
# matmuls on Sapphire Rapids and later; AVX-512 still applies.
ifeq ($(shell uname -m),x86_64)
  SIMD_FLAGS += -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif
export CGO_ENABLED  := 1
export CGO_CFLAGS   := $(SIMD_FLAGS)
export CGO_CXXFLAGS := $(SIMD_FLAGS)

.PHONY: all build third_party test fuzz vet bench demo quality heal compat clean

all: build

third_party:
	@sh scripts/link-third-party.sh

build: third_party
	$(GO) build -o $(BIN) ./cmd/ggufprune

# Also vet the build without cgo: gguf/ and bi/ need none, and llamacpp/
# must still compile (its features then say it was built without llama.cpp);
# and the pure-Go build must compile for macOS and Windows.
vet: third_party
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) vet ./...
	GOOS=darwin GOARCH=arm64 CGO_ENABLED=0 $(GO) build ./...
	GOOS=windows GOARCH=amd64 CGO_ENABLED=0 $(GO) build ./...

# Every test, then each fuzz target for a bounded time (the seed corpus runs in go test too).
test: third_party vet
	$(GO) test -count=1 -timeout 25m ./...
	$(GO) test -run '^$$' -fuzz '^FuzzNewFile$$' -fuzztime $(FUZZ_NEWFILE) ./gguf
	$(GO) test -run '^$$' -fuzz '^FuzzParseList$$' -fuzztime $(FUZZ_PARSELIST) ./gguf/blocks

# Speed and memory targets (docs/benchmarks.md). Each line prints its own
# metrics: prune vs cp on a generated 1 GiB GGUF (GGUFPRUNE_BENCH_GIB=N for
# more), capture vs plain decoding and eval on the deepest shared model, and
# the BI accumulator alone.
bench: third_party
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./gguf/surgery
	$(GO) test -run '^$$' -bench . -benchtime 5x -timeout 30m ./llamacpp
	$(GO) test -run '^$$' -bench . ./bi

demo: build
	sh scripts/demo.sh

# Expert pruning on the shipped mixture of experts (docs/experts.md).
demo-moe: build
	sh scripts/demo-moe.sh

# Every selection method on the shipped models (docs/methods.md, "Choosing blocks"):
# bin/quality/quality.json, plots, and the Markdown table on stdout; then, per
# model, plain, compensated and healed removal (bin/quality/heal-MODEL/, the
# rows of make heal).
QUALITY_MODELS := story16-f16 stories260K moe8-f16
quality: third_party
	mkdir -p bin/quality
	$(GO) run ./scripts/quality -o bin/quality | tee bin/quality/table.md
	for m in $(QUALITY_MODELS); do \
		$(GO) run ./scripts/heal -m testdata/models/$$m.gguf -o bin/quality/heal-$$m > bin/quality/heal-$$m.md || exit 1; \
		cat bin/quality/heal-$$m.md; \
	done

# Expert pruning measured: every expert metric, random choices and block
# removal at the same size, on moe8 (docs/experts.md); EXPERTS_ARGS=-m other.gguf ...
experts: third_party
	mkdir -p bin/experts
	$(GO) run ./scripts/experts -o bin/experts $(EXPERTS_ARGS) | tee bin/experts/table.md

# Plain, compensated and healed removal (docs/healing.md); HEAL_ARGS=-m other.gguf ...
heal: third_party
	$(GO) run ./scripts/heal -o bin/heal $(HEAL_ARGS)

# The files ggufprune writes, loaded and run in the newest llama.cpp through
# node-llama-cpp's prebuilt binaries (docs/testing.md, "Newest llama.cpp"):
# installs scripts/compat/node_modules from the npm registry when it is
# missing or older than the lock file (about 725 MB), then writes
# bin/compat/compat.json and the Markdown table on stdout. Not part of make test.
compat: third_party scripts/compat/node_modules/.package-lock.json
	mkdir -p bin/compat
	$(GO) run ./scripts/compat -o bin/compat | tee bin/compat/table.md

# npm install, not npm ci: the lock file lists only the platform packages the
# registry served when it was made (Linux), which npm ci refuses as out of sync.
scripts/compat/node_modules/.package-lock.json: scripts/compat/package.json scripts/compat/package-lock.json
	cd scripts/compat && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --no-audit --no-fund

clean:
	rm -rf bin third_party/llama.cpp third_party/ggml
