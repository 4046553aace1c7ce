# The human entry points. CMake does the building; this file only sequences it.
#   make run    install missing Debian packages, build, start iotfin
#   make test   install missing packages, build, run unit (also under ASan+UBSan) and e2e tests
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
# Seconds per fuzz target in `make fuzz` (two at a time); docs/security.md says how to
# run them long.
FUZZ_TIME ?= 3
JOBS ?= $(shell nproc)

.PHONY: all build deps test-deps run test unit unit-asan e2e fuzz fmt fmt-check lint bench clean

all: build

deps:
	@sh scripts/deps.sh

test-deps:
	@sh scripts/deps.sh test

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/iotfin serve

unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

unit-asan: test-deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DIOTFIN_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS)

# The suite runs the binary and its broker plugin from a folder only its owner may
# enter, as a clone in /root is: the managed broker's drop to an unprivileged user is
# then tested on every run, wherever this checkout happens to live.
PRIVATE = $(BUILD)/private
e2e: build test-deps
	@rm -rf $(PRIVATE) && mkdir -m 700 $(PRIVATE)
	@cp $(BUILD)/iotfin $(BUILD)/mosquitto_iotfin_auth.so $(PRIVATE)/
	IOTFIN_BIN=$(CURDIR)/$(PRIVATE)/iotfin /usr/bin/python3 -m pytest -q -p no:cacheprovider -n 3 tests/e2e

# libFuzzer targets (fuzz/), built with clang, ASan and UBSan; any finding fails.
fuzz: test-deps
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DIOTFIN_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) --target fuzz_all -j $(JOBS) >/dev/null
	@FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_TIME=$(FUZZ_TIME) FUZZ_JOBS=$(JOBS) sh scripts/fuzz.sh

test: test-deps build fmt-check unit unit-asan fuzz e2e

fmt:
	clang-format -i $$(git ls-files '*.c' '*.h')

fmt-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

lint: build
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --inline-suppr --suppress=missingIncludeSystem --suppress=unknownMacro -I src src plugins

bench: build
	sh bench/run.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
