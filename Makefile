# libhaext: CA_GetCurrentHAState for PKCS#11 HA groups, as a C shared library.
#
#   make          build build/libhaext.so (and build/hastatus)
#   make demo     set up a SoftHSM2 group of 3 members and print its state
#   make test     everything: Go checks and tests (race detector), C tests
#   make bench    benchmarks, written to BENCHMARKS.md
#   make install  PREFIX=/usr/local DESTDIR=

GO         ?= go
CC         ?= cc
PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PCDIR      ?= $(LIBDIR)/pkgconfig
VERSION    := 1.0.0
BUILD    := build
P11FLAGS := $(shell pkg-config --cflags p11-kit-1 2>/dev/null)
CFLAGS   := -std=c99 -O2 -g -Wall -Wextra -Werror $(P11FLAGS) -Iinclude
SONAME   := libhaext.so.1
GOFILES  := $(shell find cmd pkg internal \( -name '*.go' -o -name '*.c' -o -name '*.h' \) -not -name '*_test.go' 2>/dev/null) go.mod go.sum
LDFLAGS  := -extldflags '-Wl,--version-script=$(CURDIR)/cmd/libhaext/exports.map -Wl,-soname,$(SONAME)'

.PHONY: all deps demo test test-go test-c test-install fuzz bench install uninstall clean FORCE

all: $(BUILD)/libhaext.so $(BUILD)/hastatus

deps:
	@bash scripts/deps.sh

$(BUILD)/libhaext.so: $(GOFILES) include/cryptoki_ha.h cmd/libhaext/exports.map
	@mkdir -p $(BUILD)
	$(GO) build -buildmode=c-shared -ldflags "$(LDFLAGS)" -o $@ ./cmd/libhaext
	@rm -f $(BUILD)/libhaext.h
	@ln -sf libhaext.so $(BUILD)/$(SONAME)
	@extra=$$(nm -D --defined-only $@ | awk '{print $$3}' | grep -v '^CA_' || true); \
	  if [ -n "$$extra" ]; then echo "libhaext.so exports more than CA_*: $$extra" >&2; rm -f $@; exit 1; fi

$(BUILD)/hastatus: $(GOFILES)
	@mkdir -p $(BUILD)
	$(GO) build -o $@ ./cmd/hastatus

# The C test programs (test/c/test_*.c), each with the shared harness.
$(BUILD)/test_%: test/c/test_%.c test/c/harness.c test/c/harness.h include/cryptoki_ha.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< test/c/harness.c -ldl -lpthread

$(BUILD)/ha_state: examples/ha_state.c include/cryptoki_ha.h $(BUILD)/libhaext.so
	$(CC) $(CFLAGS) -o $@ examples/ha_state.c -L$(BUILD) -l:libhaext.so -Wl,-rpath,'$$ORIGIN'

demo: deps $(BUILD)/libhaext.so $(BUILD)/hastatus $(BUILD)/ha_state
	@bash test/lab/demo.sh

test: deps test-go test-c test-install

test-go:
	@test -z "$$(gofmt -l cmd pkg internal)" || { gofmt -l cmd pkg internal; echo "gofmt needed" >&2; exit 1; }
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

test-c: $(BUILD)/libhaext.so $(BUILD)/hastatus $(BUILD)/test_core $(BUILD)/test_faults $(BUILD)/test_login \
	$(BUILD)/test_sigpipe $(BUILD)/test_capi $(BUILD)/test_sigwait \
	$(BUILD)/test_net
	bash test/c/run.sh

test-install: $(BUILD)/libhaext.so $(BUILD)/hastatus
	bash test/install/run.sh

# The values haext.pc is made from, rewritten only when they change, so that
# `make install PREFIX=/b` after `make install PREFIX=/a` installs a haext.pc
# that names /b.
PCVARS := $(PREFIX)|$(LIBDIR)|$(INCLUDEDIR)|$(VERSION)
$(BUILD)/haext.pc.vars: FORCE
	@mkdir -p $(BUILD)
	@echo '$(PCVARS)' | cmp -s - $@ || echo '$(PCVARS)' >$@

$(BUILD)/haext.pc: haext.pc.in Makefile $(BUILD)/haext.pc.vars
	@mkdir -p $(BUILD)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' $< > $@

# The library as libhaext.so.$(VERSION) with SONAME libhaext.so.1 and the
# usual symlinks, the header, hastatus and haext.pc.
install: $(BUILD)/libhaext.so $(BUILD)/hastatus $(BUILD)/haext.pc
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(PCDIR)
	install -m 0755 $(BUILD)/libhaext.so $(DESTDIR)$(LIBDIR)/libhaext.so.$(VERSION)
	ln -sf libhaext.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libhaext.so
	install -m 0644 include/cryptoki_ha.h $(DESTDIR)$(INCLUDEDIR)/cryptoki_ha.h
	install -m 0755 $(BUILD)/hastatus $(DESTDIR)$(BINDIR)/hastatus
	install -m 0644 $(BUILD)/haext.pc $(DESTDIR)$(PCDIR)/haext.pc
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libhaext.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libhaext.so \
	    $(DESTDIR)$(INCLUDEDIR)/cryptoki_ha.h $(DESTDIR)$(BINDIR)/hastatus $(DESTDIR)$(PCDIR)/haext.pc

# Benchmarks on the lab: legacy sequential check against CA_GetCurrentHAState,
# 1 to 32 members, 0/1/5 ms injected latency, faults, concurrency, resources;
# writes BENCHMARKS.md and BENCHMARKS.json.
bench: deps $(BUILD)/libhaext.so
	bash test/bench/run.sh

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzToINI -fuzztime=30s ./pkg/conf
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=30s ./pkg/conf

FORCE:

clean:
	rm -rf $(BUILD)
