# The human entry points. CMake does the building; this file only sequences it.
#   make run    install missing Debian packages, build, start iotfin
#   make test   install missing packages, build, run the unit tests and the end-to-end
#               tests on SQLite and on PostgreSQL, side by side, but the slow fault
#               tests: about 3 minutes on 2 cores
#   make test SLOW=1   all of that, then the slow fault tests on both stores, the unit
#               and end-to-end tests under ASan+UBSan, and the fuzzers: what CI runs
#   make install / make deb   see docs/operating.md
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
# Seconds per fuzz target in `make fuzz` (two at a time); docs/security.md says how to
# run them long.
FUZZ_TIME ?= 3
JOBS ?= $(shell nproc)
# Empty: `make test` leaves out the tests marked slow. Any value: CI's full run.
SLOW ?=
# pytest -m expression for `make e2e` / `make e2e-pg`; empty runs every test.
MARK ?=
PYTEST_MARK = $(if $(MARK),-m "$(MARK)")
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all build asan-build fuzz-build deps test-deps run test unit unit-asan e2e e2e-asan \
        e2e-pg e2e-then-unit fuzz fmt fmt-check lint bench bench-deps bench-charts clean install deb

all: build

deps:
	@sh scripts/deps.sh

test-deps:
	@sh scripts/deps.sh test

bench-deps:
	@sh scripts/deps.sh bench

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/iotfin serve

unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

asan-build: test-deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DIOTFIN_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

unit-asan: asan-build
	cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS)

# The suite runs the binary and its broker plugin from a folder only its owner may
# enter, as a clone in /root is: the managed broker's drop to an unprivileged user is
# then tested on every run, wherever this checkout happens to live.
PRIVATE = $(BUILD)/private
e2e: build test-deps
	@rm -rf $(PRIVATE) && mkdir -m 700 $(PRIVATE)
	@cp $(BUILD)/iotfin $(BUILD)/mosquitto_iotfin_auth.so $(PRIVATE)/
	IOTFIN_BIN=$(CURDIR)/$(PRIVATE)/iotfin /usr/bin/python3 -m pytest -q -p no:cacheprovider -n 3 \
	  $(PYTEST_MARK) tests/e2e

# The end-to-end tests that drive the main traffic paths (errors, sessions, identity,
# import, mock, devices over MQTT, storage faults), against iotfin built with ASan and
# UBSan (the unit-asan tree). The broker loads the normal plugin: an ASan-built one
# cannot be dlopen'd by an unsanitized mosquitto. Any sanitizer report in iotfin's
# stderr, leaks included, fails the test (tests/e2e/conftest.py). Timing-tight tests
# (storms, load, kill -9 races) stay in `e2e`: an ASan binary is 2-3x slower.
E2E_ASAN_TESTS ?= tests/e2e/test_02_errors.py tests/e2e/test_03_sessions.py \
  tests/e2e/test_30_mock.py \
  tests/e2e/test_40_devices.py \
  tests/e2e/test_62_faults_hub.py::test_full_disk_refuses_writes_holds_device_events_and_recovers
ASAN_PRIVATE = $(ASAN_BUILD)/private
e2e-asan: build asan-build
	@rm -rf $(ASAN_PRIVATE) && mkdir -m 700 $(ASAN_PRIVATE)
	@cp $(ASAN_BUILD)/iotfin $(BUILD)/mosquitto_iotfin_auth.so $(ASAN_PRIVATE)/
	ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:fast_unwind_on_malloc=0 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	IOTFIN_BIN=$(CURDIR)/$(ASAN_PRIVATE)/iotfin /usr/bin/python3 -m pytest -q -p no:cacheprovider -n 3 $(E2E_ASAN_TESTS)

# libFuzzer targets (fuzz/), built with clang, ASan and UBSan; any finding fails.
fuzz-build: test-deps
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DIOTFIN_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) --target fuzz_all -j $(JOBS) >/dev/null

fuzz: fuzz-build
	@FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_TIME=$(FUZZ_TIME) FUZZ_JOBS=$(JOBS) sh scripts/fuzz.sh


# The same suite on PostgreSQL 15 (docs/scaling.md): scripts/pg.sh starts a throwaway
# cluster from Debian's packages on a free loopback port and removes it afterwards, even
# on failure; each test server gets its own schema in it. Tests about the SQLite file
# itself skip with their reason; the PostgreSQL-only ones run here (the store on
# PostgreSQL, migrate-store, a failover to a promoted standby, three instances on one
# database and one broker). PG_E2E=<files> runs a part.
PG_E2E ?= tests/e2e
PRIVATE_PG = $(BUILD)/private-pg
e2e-pg: build test-deps
	@rm -rf $(PRIVATE_PG) && mkdir -m 700 $(PRIVATE_PG)
	@cp $(BUILD)/iotfin $(BUILD)/mosquitto_iotfin_auth.so $(PRIVATE_PG)/
	sh scripts/pg.sh run env IOTFIN_BIN=$(CURDIR)/$(PRIVATE_PG)/iotfin \
	  /usr/bin/python3 -m pytest -q -p no:cacheprovider -n 3 --dist loadgroup $(PYTEST_MARK) $(PG_E2E)

# The release build, then two lanes side by side (-O keeps each one's output together):
# the end-to-end suite on PostgreSQL, the longest part; and the same suite on SQLite
# followed by the unit tests. The two suites keep both cores busy; a third job (a
# compiler) beside them made deadline tests miss. Everything that needs another build
# or holds deadlines the contract sets comes with SLOW=1, after, one at a time: the
# slow fault tests (kill -9, full disks, floods, failover) on each store, the unit
# tests and an end-to-end run under ASan+UBSan, and the fuzzers.
test: test-deps fmt-check
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory -j2 -O e2e-pg e2e-then-unit MARK="not slow"
ifneq ($(SLOW),)
	@$(MAKE) --no-print-directory e2e MARK=slow
	@$(MAKE) --no-print-directory e2e-pg MARK=slow
	@$(MAKE) --no-print-directory unit-asan
	@$(MAKE) --no-print-directory e2e-asan
	@$(MAKE) --no-print-directory fuzz
endif

# One lane of `test`: the suite on SQLite, then the unit tests.
e2e-then-unit: e2e
	@$(MAKE) --no-print-directory unit

# New files count before their first commit too (--others), so that make test on a
# working tree checks what the next commit will hold; ignored build trees do not.
C_FILES = $$(git ls-files --cached --others --exclude-standard '*.c' '*.h')
fmt:
	clang-format -i $(C_FILES)

fmt-check:
	clang-format --dry-run --Werror $(C_FILES)

lint: build
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --inline-suppr --suppress=missingIncludeSystem --suppress=unknownMacro -I src src plugins

# The unit and the settings file are written for the PREFIX given here, at install time.
install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

# build/iotfin_<version>_<arch>.deb, from the same install rules, with dpkg-deb alone.
deb: build
	@sh packaging/build-deb.sh $(BUILD)

bench: build bench-deps
	sh bench/run.sh

# Redraws docs/bench/*.svg from the results already in bench/results (no benchmark
# runs) and links them from docs/BENCHMARKS.md; fails if a result file is malformed.
bench-charts: bench-deps
	/usr/bin/python3 bench/charts.py
	/usr/bin/python3 bench/charts.py --embed docs/BENCHMARKS.md

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
