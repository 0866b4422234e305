// Package cryptoki is libhaext's access to the vendor PKCS#11 module: a
// function list (CK_FUNCTION_LIST) called from C, shared with the host.
//
// A Module comes from a path (Open: the module is loaded, and initialized
// only when nobody initialized it), or from a host that lends the function
// list it uses itself (Lend: a front module, or a host calling
// CA_SetHAExtFunctionList), in which case libhaext never initializes or
// finalizes it.
//
// Some modules, p11-kit's proxy among them, count C_Initialize calls, and a
// reference held here would turn the host's C_Finalize + C_Initialize into
// no-ops; so Open takes no initialization of a module the host already
// initialized (C_GetInfo succeeds). CKR_CRYPTOKI_ALREADY_INITIALIZED counts
// as success. The package never unloads a module, and finalizes only one it
// owns, on request (Restart).
//
// Every vendor call is made as internal/hostapi/call.h says: inside the fork
// fence (call.c: fork() waits, at most 500 ms, for libhaext's calls in
// flight, so that a child never inherits a lock the vendor took for one of
// them), through the host's gate, and with SIGPIPE blocked on its thread: a
// write to a dead member's socket inside the module leaves the signal
// pending instead of running the host's default action (terminate), and
// the guard takes it before the signal is unblocked again. The probe
// engine's own calls run on its probe threads, through the same header.
package cryptoki

/*
#cgo CFLAGS: -I${SRCDIR}/../../internal/hostapi -Wall -Werror
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "cryptoki.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	// The fork fence of call.h, one per process (call.c).
	_ "github.com/libhaext/libhaext/internal/hostapi"
	"github.com/miekg/pkcs11"
)

// Error is a CK_RV a vendor function returned, with the function's name.
type Error struct {
	Func string // e.g. "C_OpenSession"
	RV   uint
}

// Error implements error.
func (e *Error) Error() string { return e.Func + ": " + Name(e.RV) }

// RV returns the CK_RV an error carries: 0 for nil, the code of an *Error,
// CKR_GENERAL_ERROR for any other error.
func RV(err error) uint {
	if err == nil {
		return pkcs11.CKR_OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.RV
	}
	return pkcs11.CKR_GENERAL_ERROR
}

func check(fn string, rv C.CK_RV) error {
	if rv == C.CKR_OK {
		return nil
	}
	return &Error{Func: fn, RV: uint(rv)}
}

// Module is a vendor module's function list, with the host's gate around
// every call. Its methods are safe for concurrent use, as far as the vendor
// module is.
type Module struct {
	host *C.struct_haext_vendor // C memory: the probe threads keep pointers to it
	lent bool                   // the host lent it: never initialize it
	// perCaller: the module gives every C_GetFunctionList caller its own
	// instance, so this one is not the host's.
	perCaller bool
	owner     atomic.Bool // this package initialized the module
	mu        sync.Mutex  // serializes Restart
}

// Open loads the module at path and initializes it unless the host already
// did.
func Open(path string) (*Module, error) {
	if path == "" {
		return nil, errors.New("cryptoki: no vendor module configured")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("cryptoki: vendor module: %w", err)
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var handle unsafe.Pointer
	var list C.CK_FUNCTION_LIST_PTR
	var perCaller C.int
	var why *C.char
	if rv := C.cryptoki_load(cpath, &handle, &list, &perCaller, &why); rv != C.CKR_OK {
		if why != nil {
			return nil, fmt.Errorf("cryptoki: cannot load vendor module %s: %s", path, C.GoString(why))
		}
		return nil, fmt.Errorf("cryptoki: cannot load vendor module %s: %w", path, check("C_GetFunctionList", rv))
	}
	m := newModule(list, false)
	m.perCaller = perCaller != 0
	if err := m.attach(); err != nil {
		return nil, fmt.Errorf("cryptoki: %s: %w", path, err)
	}
	return m, nil
}

// Attach returns a Module over a function list loaded by other means
// (a CK_FUNCTION_LIST_PTR), initializing the module unless it is
// initialized already, as Open does.
func Attach(list unsafe.Pointer) (*Module, error) {
	m := newModule(C.CK_FUNCTION_LIST_PTR(list), false)
	if err := m.attach(); err != nil {
		return nil, fmt.Errorf("cryptoki: %w", err)
	}
	return m, nil
}

// Lend returns a Module over a function list the host initialized and
// uses itself. host is a struct haext_vendor (internal/hostapi) whose hooks
// may be NULL; Lend copies it. The module is never initialized or
// finalized here.
func Lend(host unsafe.Pointer) *Module {
	h := (*C.struct_haext_vendor)(host)
	m := newModule(h.list, true)
	*m.host = *h
	return m
}

func newModule(list C.CK_FUNCTION_LIST_PTR, lent bool) *Module {
	h := (*C.struct_haext_vendor)(C.calloc(1, C.sizeof_struct_haext_vendor))
	h.list = list
	return &Module{host: h, lent: lent}
}

// Host returns the module's struct haext_vendor, for C code that calls the
// module (the probe engine's probe threads). It lives as long as the process.
func (m *Module) Host() unsafe.Pointer { return unsafe.Pointer(m.host) }

// attach initializes the module unless it is initialized already.
func (m *Module) attach() error {
	if m.Info() == nil {
		return nil // the host's: take no reference
	}
	return m.initialize()
}

// initialize calls C_Initialize; ALREADY_INITIALIZED means the host won a
// race and owns the module.
func (m *Module) initialize() error {
	switch rv := C.cryptoki_initialize(m.host); rv {
	case C.CKR_OK:
		m.owner.Store(true)
		return nil
	case C.CKR_CRYPTOKI_ALREADY_INITIALIZED:
		return nil
	default:
		return check("C_Initialize", rv)
	}
}

// Info calls C_GetInfo: nil when the module is initialized. Some modules
// answer it locally (p11-kit's proxy); others ask their server (Caml
// Crush), so it may take a round trip or hang with the network.
func (m *Module) Info() error {
	var info C.CK_INFO
	return check("C_GetInfo", C.cryptoki_get_info(m.host, &info))
}

// Owner reports whether this package initialized the module.
func (m *Module) Owner() bool { return m.owner.Load() }

// Lent reports whether the host lent the module (Lend).
func (m *Module) Lent() bool { return m.lent }

// PerCaller reports whether the module gives every caller of
// C_GetFunctionList its own instance (p11-kit-proxy does): the Module then
// has an instance of its own, not the host's, which keeps its own
// connections to the members. A host should lend its function list
// instead (Lend).
func (m *Module) PerCaller() bool { return m.perCaller }

// Release finalizes the module when this package initialized it (an
// instance of its own that nobody else uses), so that its connections are
// closed. The caller must make sure no call is in flight.
func (m *Module) Release() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.owner.Swap(false) {
		return nil
	}
	return check("C_Finalize", C.cryptoki_finalize(m.host))
}

// LendsSessions reports whether the host also lends its sessions for the
// lightweight call (a front module does).
func (m *Module) LendsSessions() bool { return m.host.borrow != nil }

// sigpipesTaken returns how many SIGPIPEs this package's vendor calls
// raised and the guard took, process-wide (the tests read it).
func sigpipesTaken() uint64 { return uint64(C.cryptoki_sigpipes_taken()) }

// Reinitialize initializes the module again after a C_Finalize, when this
// package initialized it in the first place. A module the host initialized
// is the host's to initialize again: Reinitialize then answers
// CKR_CRYPTOKI_NOT_INITIALIZED and the engine keeps waiting.
func (m *Module) Reinitialize() error {
	if !m.owner.Load() {
		return &Error{Func: "C_Initialize", RV: pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED}
	}
	m.owner.Store(false)
	return m.initialize()
}

// Restart finalizes and initializes again a module this package owns, so
// that a vendor client that reconnects only on initialization (p11-kit's)
// reaches members that came back. Only a program that is its own host
// (hastatus) may call it, and only while no other call is in flight:
// C_Finalize during another call is undefined behaviour.
func (m *Module) Restart() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.owner.Load() {
		return errors.New("cryptoki: restart: the module is not this program's to finalize")
	}
	if err := check("C_Finalize", C.cryptoki_finalize(m.host)); err != nil {
		return err
	}
	m.owner.Store(false)
	return m.initialize()
}

// Slots lists every slot, token or not, so that the module need not ask
// its members (C_GetSlotList with tokenPresent false).
func (m *Module) Slots() ([]uint, error) {
	for {
		var n C.CK_ULONG
		if err := check("C_GetSlotList", C.cryptoki_slot_list(m.host, nil, &n)); err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, nil
		}
		buf := make([]C.CK_SLOT_ID, n)
		got := n
		rv := C.cryptoki_slot_list(m.host, &buf[0], &got)
		if rv == C.CKR_BUFFER_TOO_SMALL {
			continue // a slot appeared in between
		}
		if err := check("C_GetSlotList", rv); err != nil {
			return nil, err
		}
		out := make([]uint, got)
		for i := range out {
			out[i] = uint(buf[i])
		}
		return out, nil
	}
}

// Token returns the serial number and label of the token in a slot, with
// their blank padding removed.
func (m *Module) Token(slot uint) (serial, label string, err error) {
	var info C.CK_TOKEN_INFO
	if err := check("C_GetTokenInfo", C.cryptoki_token_info(m.host, C.CK_SLOT_ID(slot), &info)); err != nil {
		return "", "", err
	}
	return padded(info.serialNumber[:]), padded(info.label[:]), nil
}

// padded returns a blank-padded PKCS#11 text field without its padding.
func padded(b []C.CK_UTF8CHAR) string {
	return strings.TrimRight(string(unsafe.Slice((*byte)(unsafe.Pointer(&b[0])), len(b))), " \x00")
}

// OpenSession opens a read-only, not logged-in session.
func (m *Module) OpenSession(slot uint) (uint, error) {
	var h C.CK_SESSION_HANDLE
	err := check("C_OpenSession", C.cryptoki_open_session(m.host, C.CK_SLOT_ID(slot), &h))
	return uint(h), err
}

// CloseSession closes a session.
func (m *Module) CloseSession(session uint) error {
	return check("C_CloseSession", C.cryptoki_close_session(m.host, C.CK_SESSION_HANDLE(session)))
}

// SessionInfo is the lightweight call, C_GetSessionInfo.
func (m *Module) SessionInfo(session uint) error {
	return check("C_GetSessionInfo", C.cryptoki_session_info(m.host, C.CK_SESSION_HANDLE(session)))
}
