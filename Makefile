# Thin entry points; CMake does the building. `make test` and `make run` each do all set-up themselves.
BUILD ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)
export PATH := /usr/local/cuda/bin:$(PATH)

.PHONY: all setup configure build test test-gpu run clean

all: build

setup:
	@tools/setup.sh

configure: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# Every CPU test (unit + golden); GPU tests carry the label `gpu` and run with `make test-gpu`.
test: build
	@cd $(BUILD) && ctest --output-on-failure -LE gpu -j $(JOBS)

test-gpu: build
	@cd $(BUILD) && ctest --output-on-failure -L gpu

# The main job: ask the default model (SmolLM2-135M-Instruct, fetched by setup) a question on this machine.
QUESTION ?= What is the capital of France?
run: build
	@$(BUILD)/tandem run --temp 0 "$(QUESTION)"

clean:
	@rm -rf $(BUILD)
