# libhaext: CA_GetCurrentHAState for PKCS#11 HA groups, as a C shared library.
#
#   make          build build/libhaext.so, build/libhaext-pkcs11.so (and build/hastatus)
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
FRONTDIR   ?= $(LIBDIR)/pkcs11
DOCDIR     ?= $(PREFIX)/share/doc/libhaext
VERSION    := 1.0.0
BUILD    := build
P11FLAGS := $(shell pkg-config --cflags p11-kit-1 2>/dev/null)
CFLAGS   := -std=c99 -O2 -g -Wall -Wextra -Werror $(P11FLAGS) -Iinclude
SONAME   := libhaext.so.1
GOFILES  := $(shell find cmd pkg internal \( -name '*.go' -o -name '*.c' -o -name '*.h' \) -not -name '*_test.go' 2>/dev/null) go.mod go.sum
LDFLAGS  := -extldflags '-Wl,--version-script=$(CURDIR)/cmd/libhaext/exports.map -Wl,-soname,$(SONAME)'

.PHONY: all deps demo test test-go test-c test-front test-eco test-ha test-install test-exporter test-deb fuzz bench \
	install install-front uninstall clean FORCE

all: $(BUILD)/libhaext.so $(BUILD)/hastatus $(BUILD)/libhaext-pkcs11.so

deps:
	@bash scripts/deps.sh

$(BUILD)/libhaext.so: $(GOFILES) include/cryptoki_ha.h cmd/libhaext/exports.map
	@mkdir -p $(BUILD)
	$(GO) build -buildmode=c-shared -ldflags "$(LDFLAGS)" -o $@ ./cmd/libhaext
	@rm -f $(BUILD)/libhaext.h
	@ln -sf libhaext.so $(BUILD)/$(SONAME)
	@extra=$$(nm -D --defined-only $@ | awk '{print $$3}' | grep -v '^CA_' || true); \
	  if [ -n "$$extra" ]; then echo "libhaext.so exports more than CA_*: $$extra" >&2; rm -f $@; exit 1; fi

# The front module: a PKCS#11 module loaded instead of the vendor's, plain C
# (internal/front), with no Go in it: it loads libhaext.so, the engine, on
# the host's first CA_* call. It exports exactly the 68 C_* functions of
# PKCS#11 2.40 and 3.0's C_GetInterfaceList and C_GetInterface listed in its
# exports.map, and CA_*. -z nodelete: libhaext.so's threads keep pointers
# into it, so a host's dlclose must not unmap it.
FRONT_SRC := $(wildcard internal/front/*.c)
FRONT_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Werror -fPIC $(P11FLAGS) -Iinternal/hostapi -Iinternal/front
# Extra compiler and linker flags for the front, after its own (empty by
# default; debian/rules gives Debian's hardening flags).
FRONT_EXTRA ?=
$(BUILD)/libhaext-pkcs11.so: $(FRONT_SRC) $(wildcard internal/front/*.h) $(wildcard internal/hostapi/*.h) \
		cmd/libhaext-pkcs11/exports.map
	@mkdir -p $(BUILD)
	$(CC) $(FRONT_CFLAGS) $(FRONT_EXTRA) -shared -Wl,--version-script=cmd/libhaext-pkcs11/exports.map \
	    -Wl,-soname,libhaext-pkcs11.so -Wl,-z,nodelete -Wl,--no-undefined -o $@ $(FRONT_SRC) -ldl -lpthread
	@want=$$(sed -n 's/^ *\(C_[A-Za-z]*\);$$/\1/p' cmd/libhaext-pkcs11/exports.map | sort); \
	  got=$$(nm -D --defined-only $@ | awk '{print $$3}' | grep -v '^CA_' | sort); \
	  if [ "$$want" != "$$got" ] || [ $$(echo "$$want" | wc -l) -ne 70 ]; then \
	    echo "libhaext-pkcs11.so must export the 70 C_* of exports.map and CA_*, and nothing else:" >&2; \
	    echo "$$want" > $@.want; echo "$$got" > $@.got; diff $@.want $@.got >&2; rm -f $@ $@.want $@.got; exit 1; fi

$(BUILD)/hastatus: $(GOFILES)
	@mkdir -p $(BUILD)
	$(GO) build -o $@ ./cmd/hastatus

# The C test programs (test/c/test_*.c), each with the shared harness.
$(BUILD)/test_%: test/c/test_%.c test/c/harness.c test/c/harness.h include/cryptoki_ha.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< test/c/harness.c -ldl -lpthread

# A PKCS#11 module that delays and serializes the calls of another
# (test/shim/delayshim.c): the benchmarks' latency, the fork test's lock.
$(BUILD)/delayshim.so: test/shim/delayshim.c test/shim/shim.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -fPIC -shared -fvisibility=hidden -o $@ $< -ldl -lpthread

# A PKCS#11 3.0 module over another (test/shim/v3shim.c): the front's
# 3.0 interface tests.
$(BUILD)/v3shim.so: test/shim/v3shim.c test/shim/shim.h internal/front/pkcs11v3.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -Iinternal/front -fPIC -shared -fvisibility=hidden -o $@ $< -ldl -lpthread
# A PKCS#11 module that counts overlapping calls on one session handle
# (test/shim/watchshim.c): the front's lending test (test/consumers).
$(BUILD)/watchshim.so: test/shim/watchshim.c test/shim/shim.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -std=gnu11 -fPIC -shared -fvisibility=hidden -o $@ $< -ldl -lpthread

$(BUILD)/ha_state: examples/ha_state.c include/cryptoki_ha.h $(BUILD)/libhaext.so
	$(CC) $(CFLAGS) -o $@ examples/ha_state.c -L$(BUILD) -l:libhaext.so -Wl,-rpath,'$$ORIGIN'

demo: deps $(BUILD)/libhaext.so $(BUILD)/hastatus $(BUILD)/ha_state $(BUILD)/libhaext-pkcs11.so $(BUILD)/ha_host
	@bash test/lab/demo.sh

# A host of the HA slot (test/ha/ha_host.c): make demo signs with it while
# a member is killed.
$(BUILD)/ha_host: test/ha/ha_host.c
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -O2 -g -Wall -Wextra -Werror -Wno-deprecated-declarations $(P11FLAGS) -o $@ $< \
	    -ldl -lpthread -lcrypto

# Every runner of make test ends with "N passed, N failed" (go test's
# packages are counted), recorded by scripts/tally.sh; make test ends with
# each runner's line and their total.
TALLY := bash scripts/tally.sh
test: deps
	@mkdir -p $(BUILD) && rm -f $(BUILD)/tally
	@HAEXT_TALLY=$(abspath $(BUILD))/tally $(MAKE) --no-print-directory test-go test-c test-front test-eco test-ha \
	  test-install test-exporter test-deb; \
	  rc=$$?; $(TALLY) --total $(BUILD)/tally; exit $$rc

test-go:
	@test -z "$$(gofmt -l cmd pkg internal)" || { gofmt -l cmd pkg internal; echo "gofmt needed" >&2; exit 1; }
	$(GO) vet ./...
	$(TALLY) --packages go $(GO) test -race -count=1 ./...

test-c: $(BUILD)/libhaext.so $(BUILD)/hastatus $(BUILD)/test_core $(BUILD)/test_faults $(BUILD)/test_login \
	$(BUILD)/test_sigpipe $(BUILD)/test_capi $(BUILD)/test_sigwait \
	$(BUILD)/test_net $(BUILD)/test_unknownslot $(BUILD)/libhaext-pkcs11.so $(BUILD)/delayshim.so \
	$(BUILD)/test_callback
	$(TALLY) c bash test/c/run.sh

# The front module with real consumers (PyKCS11, OpenSSL's pkcs11 engine)
# against SoftHSM2 and the p11-kit lab, side by side with the vendor alone;
# then the do-no-harm checks (exit without C_Finalize, setuid, threads).
test-front: $(BUILD)/libhaext-pkcs11.so $(BUILD)/libhaext.so $(BUILD)/delayshim.so $(BUILD)/v3shim.so \
	$(BUILD)/watchshim.so
	$(TALLY) front bash test/consumers/run.sh
	$(TALLY) harm bash test/consumers/harm.sh

# The HA slot (issue 19) on the p11-kit lab and SoftHSM2: consumers on it,
# signing threads while members die, failover in flight, drift, lifecycle.
test-ha: $(BUILD)/libhaext-pkcs11.so $(BUILD)/libhaext.so
	$(TALLY) ha bash test/ha/run.sh

# The consumers a user runs (OpenSSL 3 with pkcs11-provider, Java SunPKCS11,
# NSS's tools, GnuTLS, pkcs11-tool, a C host; p11-kit with the front
# registered) through the front and through the vendor alone, side by side,
# over SoftHSM2 and p11-kit-proxy (test/consumers/eco.sh).
test-eco: $(BUILD)/libhaext-pkcs11.so $(BUILD)/libhaext.so
	$(TALLY) eco bash test/consumers/eco.sh

test-install: $(BUILD)/libhaext.so $(BUILD)/hastatus $(BUILD)/libhaext-pkcs11.so
	$(TALLY) install bash test/install/run.sh

# hastatus --listen, the Prometheus exporter, scraped with curl on the p11-kit
# lab while a member hangs, resumes, dies and comes back (issue 20).
test-exporter: $(BUILD)/hastatus
	$(TALLY) exporter bash test/exporter/run.sh

# The Debian packages (debian/): built with dpkg-buildpackage in a copy of
# the tree, lintian, installed, used on a SoftHSM2 group, then purged. Last
# in make test: while they are installed, /usr/lib/<multiarch>/libhaext.so.1
# is on the loader's default path (test/deb/run.sh).
test-deb:
	$(TALLY) deb bash test/deb/run.sh

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
install: $(BUILD)/libhaext.so $(BUILD)/hastatus $(BUILD)/haext.pc install-front
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(PCDIR)
	install -m 0755 $(BUILD)/libhaext.so $(DESTDIR)$(LIBDIR)/libhaext.so.$(VERSION)
	ln -sf libhaext.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libhaext.so
	install -m 0644 include/cryptoki_ha.h $(DESTDIR)$(INCLUDEDIR)/cryptoki_ha.h
	install -m 0755 $(BUILD)/hastatus $(DESTDIR)$(BINDIR)/hastatus
	install -m 0644 $(BUILD)/haext.pc $(DESTDIR)$(PCDIR)/haext.pc
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

# The front module where Debian keeps PKCS#11 modules, and an example p11-kit
# module file naming it (written here, from the FRONTDIR of this install).
install-front: $(BUILD)/libhaext-pkcs11.so cmd/libhaext-pkcs11/libhaext-pkcs11.module.in
	install -d $(DESTDIR)$(FRONTDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 $(BUILD)/libhaext-pkcs11.so $(DESTDIR)$(FRONTDIR)/libhaext-pkcs11.so
	sed -e 's|@FRONTDIR@|$(FRONTDIR)|' cmd/libhaext-pkcs11/libhaext-pkcs11.module.in \
	    > $(DESTDIR)$(DOCDIR)/libhaext-pkcs11.module
	chmod 0644 $(DESTDIR)$(DOCDIR)/libhaext-pkcs11.module

uninstall:
	rm -f $(DESTDIR)$(FRONTDIR)/libhaext-pkcs11.so $(DESTDIR)$(DOCDIR)/libhaext-pkcs11.module
	rm -f $(DESTDIR)$(LIBDIR)/libhaext.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libhaext.so \
	    $(DESTDIR)$(INCLUDEDIR)/cryptoki_ha.h $(DESTDIR)$(BINDIR)/hastatus $(DESTDIR)$(PCDIR)/haext.pc

# Benchmarks on the lab: legacy sequential check against CA_GetCurrentHAState,
# 1 to 32 members, 0/1/5 ms injected latency, faults, concurrency, resources;
# writes BENCHMARKS.md, and the raw numbers to build/bench/results.json.
bench: deps $(BUILD)/libhaext.so $(BUILD)/libhaext-pkcs11.so $(BUILD)/delayshim.so
	bash test/bench/run.sh

# Every fuzz target (func Fuzz* in any package's tests), each for FUZZTIME.
FUZZTIME ?= 30s
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

FORCE:

clean:
	rm -rf $(BUILD)
