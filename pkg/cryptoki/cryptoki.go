// Package cryptoki loads a vendor PKCS#11 module with github.com/miekg/pkcs11
// and serves it to the probe engine as a probe.Module.
//
// It shares the module with the host application. When the host already
// initialized the module (C_GetInfo succeeds), the package takes no
// initialization of its own: some modules, p11-kit's proxy among them, count
// C_Initialize calls, and a reference held here would turn the host's
// C_Finalize + C_Initialize into no-ops. Only a module nobody initialized is
// initialized here (CKR_CRYPTOKI_ALREADY_INITIALIZED counts as success), and
// only such a module is initialized again after a C_Finalize. The package
// never calls C_Finalize nor unloads the module.
//
// Every vendor call runs with SIGPIPE blocked on its OS thread. A write to a
// dead member's socket inside the module then leaves the signal pending
// instead of running the host's default action (terminate); it is drained
// with sigtimedwait before the signal is unblocked again.
package cryptoki

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <time.h>

// Whether SIGPIPE was already blocked on this thread when the guard began.
static __thread int haext_was_blocked;

static void haext_sigpipe_block(void) {
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	haext_was_blocked = sigismember(&old, SIGPIPE);
}

// Drains pending SIGPIPEs, restores the thread's mask, returns how many.
static int haext_sigpipe_restore(void) {
	sigset_t set;
	struct timespec zero = {0, 0};
	int drained = 0;
	if (haext_was_blocked) {
		return 0;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	while (sigtimedwait(&set, NULL, &zero) == SIGPIPE) {
		drained++;
	}
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	return drained;
}

static const char *haext_dlerror(void) {
	const char *e = dlerror();
	return e ? e : "unknown dlopen error";
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync/atomic"

	"github.com/miekg/pkcs11"

	"github.com/libhaext/libhaext/pkg/probe"
)

// Module is a loaded vendor PKCS#11 module. It implements probe.Module and
// is safe for concurrent use, as far as the vendor module is.
type Module struct {
	ctx      *pkcs11.Ctx
	sigpipes atomic.Uint64
	owner    atomic.Bool // this package initialized the module
}

var _ probe.Module = (*Module)(nil)

// Open loads the module at path and initializes it unless the host already
// did.
func Open(path string) (*Module, error) {
	if path == "" {
		return nil, errors.New("cryptoki: no vendor module configured")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("cryptoki: vendor module: %w", err)
	}
	m := &Module{}
	runtime.LockOSThread() // dlerror is per thread
	m.ctx = pkcs11.New(path)
	if m.ctx == nil {
		reason := C.GoString(C.haext_dlerror())
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("cryptoki: cannot load vendor module %s: %s", path, reason)
	}
	runtime.UnlockOSThread()
	if err := m.attach(); err != nil {
		return nil, fmt.Errorf("cryptoki: C_Initialize of %s: %w", path, err)
	}
	return m, nil
}

// attach initializes the module unless it is initialized already.
func (m *Module) attach() error {
	guard()
	defer m.unguard()
	if _, err := m.ctx.GetInfo(); err == nil {
		return nil // the host's: take no reference
	}
	return m.initialize()
}

// initialize calls C_Initialize; ALREADY_INITIALIZED means the host won a
// race and owns the module. The caller holds the guard.
func (m *Module) initialize() error {
	err := m.ctx.Initialize()
	switch rv(err) {
	case 0:
		m.owner.Store(true)
		return nil
	case pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED:
		return nil
	}
	return convert(err)
}

// Owner reports whether this package initialized the module.
func (m *Module) Owner() bool { return m.owner.Load() }

// SigpipesDrained returns how many SIGPIPEs vendor calls raised and this
// package drained.
func (m *Module) SigpipesDrained() uint64 { return m.sigpipes.Load() }

// guard locks the calling goroutine to its thread and blocks SIGPIPE there;
// unguard drains a pending SIGPIPE, unblocks it and unlocks the thread.
// Every vendor call runs between the two.
func guard() {
	runtime.LockOSThread()
	C.haext_sigpipe_block()
}

func (m *Module) unguard() {
	if n := C.haext_sigpipe_restore(); n > 0 {
		m.sigpipes.Add(uint64(n))
	}
	runtime.UnlockOSThread()
}

// Reinitialize initializes the module again after a C_Finalize, when this
// package initialized it in the first place. A module the host initialized
// is the host's to initialize again: Reinitialize then answers
// CKR_CRYPTOKI_NOT_INITIALIZED and the engine keeps waiting.
func (m *Module) Reinitialize() error {
	if !m.owner.Load() {
		return probe.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED)
	}
	guard()
	defer m.unguard()
	m.owner.Store(false)
	return m.initialize()
}

// Slots lists every slot, token or not, so that the module need not ask
// its members (C_GetSlotList with tokenPresent false).
func (m *Module) Slots() ([]uint, error) {
	guard()
	defer m.unguard()
	slots, err := m.ctx.GetSlotList(false)
	return slots, convert(err)
}

// Token returns the serial number and label of the token in a slot.
func (m *Module) Token(slot uint) (serial, label string, err error) {
	guard()
	defer m.unguard()
	info, err := m.ctx.GetTokenInfo(slot)
	if err != nil {
		return "", "", convert(err)
	}
	return strings.TrimSpace(info.SerialNumber), strings.TrimSpace(info.Label), nil
}

// OpenSession opens a read-only, not logged-in session.
func (m *Module) OpenSession(slot uint) (uint, error) {
	guard()
	defer m.unguard()
	h, err := m.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	return uint(h), convert(err)
}

// CloseSession closes a session.
func (m *Module) CloseSession(session uint) error {
	guard()
	defer m.unguard()
	return convert(m.ctx.CloseSession(pkcs11.SessionHandle(session)))
}

// SessionInfo is the lightweight call, C_GetSessionInfo.
func (m *Module) SessionInfo(session uint) error {
	guard()
	defer m.unguard()
	_, err := m.ctx.GetSessionInfo(pkcs11.SessionHandle(session))
	return convert(err)
}

func rv(err error) uint {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return 0
}

// convert turns a miekg/pkcs11 error into a probe.Error with the same CK_RV.
func convert(err error) error {
	if err == nil {
		return nil
	}
	if code := rv(err); code != 0 {
		return probe.Error(code)
	}
	return err
}
