# Thin entry points; CMake does the building. `make test` and `make run` each do all set-up themselves.
BUILD ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)
export PATH := /usr/local/cuda/bin:$(PATH)

# Fuzz targets (tests/fuzz, clang + libFuzzer + ASan/UBSan) and the ASan + UBSan build of the CPU tests, in build
# dirs of their own; `make test` runs both after the normal CPU tests.
FUZZ_BUILD ?= build-fuzz
ASAN_BUILD ?= build-asan
FUZZ_CXX ?= clang++-14
FUZZ_SECONDS ?= 20
# The CPU test binaries (no gpu_tests) and the CLI the tests run. Under the sanitizers the tests that run the default
# model (SmolLM2-135M) on the CPU are left out: 10-50x slower there (perplexity alone 30 min, the chat CLI tests time
# out), so the golden label runs its tiny fixture models only (ASAN_EXCLUDE: DefaultModel.*, CliDefaultModel.*,
# CpuPathDefaultModel.*; the last two took 17 of the 26 CPU-minutes of the sanitizer tests, which put CI at 33 min on
# 12-06), and the server label (every test serves the default model) is not built; the HTTP request parser is fuzzed
# instead (tests/fuzz, fuzz_openai_request). The code they run is still under the sanitizers through the tiny models.
ASAN_TARGETS := tandem unit_tests golden_tests planted_tests
ASAN_LABELS := unit|golden|planted
ASAN_EXCLUDE := DefaultModel\.
# LeakSanitizer suppressions: tools/sanitize_suppressions.txt (none needed so far: the static CUDA runtime leaks nothing
# LSan sees on a machine without a GPU). protect_shadow_gap=0 lets the CUDA driver map memory where ASan would
# reserve it (only matters on a machine with a GPU). quarantine_size_mb=32 (default 256): the hostile-input tests hold
# peak RSS to a budget (64 MB), and freed blocks waiting in a large quarantine count against it.
SAN_ENV := ASAN_OPTIONS=detect_leaks=1:protect_shadow_gap=0:quarantine_size_mb=32:strict_string_checks=1 \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
           LSAN_OPTIONS=suppressions=$(CURDIR)/tools/sanitize_suppressions.txt:print_suppressions=0

.PHONY: all setup configure build test test-gpu run clean fuzz sanitize fuzz-run sanitize-run

all: build

setup:
	@tools/setup.sh

configure: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# Every CPU test (unit + golden); GPU tests carry the label `gpu` and run with `make test-gpu`.
# Then the fuzz targets (label `fuzz`: FUZZ_SECONDS each, plus the committed crash inputs) and the ASan + UBSan suite.
# Fresh clone on the 2-core machine (2026-12-06, ef71306, CCACHE_DISABLE=1, other builds sharing the cores for about 5
# of its minutes): 28 min 03 s in all; the CPU tests 252 s, fuzz 85 s, the sanitizer tests 288 s (CpuAttention's
# 280 s is the tail), the rest is setup and the three builds.
test: build
	@cd $(BUILD) && ctest --output-on-failure -LE gpu -j $(JOBS)
	@$(MAKE) --no-print-directory fuzz-run sanitize-run

fuzz: setup
	@$(MAKE) --no-print-directory fuzz-run

sanitize: setup
	@$(MAKE) --no-print-directory sanitize-run

fuzz-run:
	@cmake -S tests/fuzz -B $(FUZZ_BUILD) -G Ninja -DCMAKE_CXX_COMPILER=$(FUZZ_CXX) \
	  -DTANDEM_FUZZ_SECONDS=$(FUZZ_SECONDS) >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS)
	@cd $(FUZZ_BUILD) && ctest --output-on-failure -L fuzz -j $(JOBS)

sanitize-run:
	@cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DTANDEM_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS) --target $(ASAN_TARGETS)
	@cd $(ASAN_BUILD) && $(SAN_ENV) ctest --output-on-failure -L '$(ASAN_LABELS)' -LE gpu \
	  -E '$(ASAN_EXCLUDE)' --timeout 600 -j $(JOBS)

test-gpu: build
	@cd $(BUILD) && ctest --output-on-failure -L gpu

# The main job: ask the default model (SmolLM2-135M-Instruct, fetched by setup) a question on this machine.
QUESTION ?= What is the capital of France?
run: build
	@$(BUILD)/tandem run --temp 0 "$(QUESTION)"

clean:
	@rm -rf $(BUILD) $(FUZZ_BUILD) $(ASAN_BUILD)
