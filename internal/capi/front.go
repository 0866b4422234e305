package capi

/*
#include "hostapi.h"

static inline int front_wait(const struct haext_front *f) { return f->wait(); }
static inline int front_poll(const struct haext_front *f, struct haext_front_event *ev) { return f->poll(ev); }
*/
import "C"

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/libhaext/libhaext/pkg/cryptoki"
	"github.com/libhaext/libhaext/pkg/probe"
)

// The front module that attached itself (CA_HAExtAttachFront), if any.
var (
	attached   atomic.Pointer[C.struct_haext_front]
	attachOnce sync.Once
	// applyMu makes taking an event and applying it one step: a status
	// call that finds the queue empty knows that every event queued
	// before it has been applied.
	applyMu sync.Mutex
)

// attachedHost is the struct haext_vendor of the front that attached itself,
// or nil.
func attachedHost() unsafe.Pointer {
	if f := attached.Load(); f != nil {
		return unsafe.Pointer(f.vendor)
	}
	return nil
}

// haextAttachFront answers CA_HAExtAttachFront (capi.c): a front module
// (libhaext-pkcs11.so) loaded this library on the host's first CA_* call.
// From then on the library uses the host's own instance of the vendor as
// the front lends it, with its gate and sessions (never one of its own),
// and follows what the front saw of the host: its C_Initialize (every
// member resolved again by the next status call), its C_Finalize (every
// member CKR_HA_NO_INSTANCE; the gate holds libhaext's calls out), and the
// failures of its calls on a member's slot (the member's next verdict, and
// its recovery). Every status call first applies the events queued before
// it; a goroutine that waits in C applies the others as they come.
//
//export haextAttachFront
func haextAttachFront(f *C.struct_haext_front, reason **C.char) (out C.CK_RV) {
	msg := ""
	defer func() { out = answer(out, msg, recover(), reason) }()
	switch {
	case f == nil || f.vendor == nil || f.wait == nil || f.poll == nil || f.pending == nil:
		return C.CKR_ARGUMENTS_BAD
	case f.abi != C.HAEXT_FRONT_ABI:
		msg = fmt.Sprintf("front module ABI %d, this library speaks %d: install libhaext-pkcs11.so and "+
			"libhaext.so of the same version", int(f.abi), int(C.HAEXT_FRONT_ABI))
		return C.CKR_GENERAL_ERROR
	}
	if !attached.CompareAndSwap(nil, f) && attached.Load() != f {
		msg = "another front module is attached to this library already"
		return C.CKR_GENERAL_ERROR
	}
	attachOnce.Do(func() {
		lib.BeforeState(func() { applyFront(f) })
		go followFront(f)
		if lib.Engine() != nil {
			// The host used this library beside the module first: move the
			// engine to the host's instance.
			if err := lib.Lend(cryptoki.Lend(unsafe.Pointer(f.vendor))); err != nil {
				out, msg = returnValue(err), err.Error()
			}
		}
	})
	return out
}

// followFront applies the front's events for the life of the process. Its
// goroutine waits in C and wakes only when the host did something the
// engine must know.
func followFront(f *C.struct_haext_front) {
	for {
		C.front_wait(f)
		applyFront(f)
	}
}

// applyFront hands every queued event to the engine. With none queued (the
// front's count, read from Go) it makes no call into C.
func applyFront(f *C.struct_haext_front) {
	if atomic.LoadInt32((*int32)(unsafe.Pointer(f.pending))) == 0 {
		return
	}
	applyMu.Lock()
	defer applyMu.Unlock()
	var ev C.struct_haext_front_event
	for C.front_poll(f, &ev) != 0 {
		eng := lib.Engine()
		if eng == nil {
			continue // the engine starts with the host's instance as it is
		}
		switch ev.kind {
		case C.HAEXT_EV_INITIALIZED, C.HAEXT_EV_OVERFLOW:
			eng.HostInitialized()
		case C.HAEXT_EV_FINALIZED:
			eng.HostFinalized()
		case C.HAEXT_EV_HOST_ERROR:
			if ev.slot != C.HAEXT_SLOT_NONE {
				eng.HostError(uint(ev.slot), probe.Status(ev.rv))
			}
		}
	}
}
