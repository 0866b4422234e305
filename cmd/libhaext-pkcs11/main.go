// Command libhaext-pkcs11 is built with -buildmode=c-shared into
// libhaext-pkcs11.so, the PKCS#11 module a host loads instead of its
// vendor's: the C_* functions of PKCS#11 2.40 (internal/front, plain C
// trampolines to the vendor module) and the CA_* calls of libhaext
// (internal/capi), so the process has one Go runtime. exports.map keeps
// every other symbol out of the host's namespace.
//
// Here the two meet: the library uses the host's own instance of the
// vendor, as the front lends it (never an instance of its own), and follows
// what the front sees of the host: its C_Initialize (every member resolved
// again by the next status call), its C_Finalize (every member
// CKR_HA_NO_INSTANCE; the front's gate already holds libhaext's calls out),
// and the failures of its calls on a member's slot (the member's next
// verdict, and its recovery). The engine starts on the first CA_* call, not
// before: until the host asks something only libhaext can answer, the front
// makes no vendor call of its own.
package main

import (
	"sync"

	"github.com/libhaext/libhaext/internal/capi"
	"github.com/libhaext/libhaext/internal/front"
	"github.com/libhaext/libhaext/internal/service"
	"github.com/libhaext/libhaext/pkg/probe"
)

func init() {
	lib := capi.UseFront(front.Host)
	// A status call first applies what the host did before it (its
	// C_Initialize right before, say), so that it never answers from a
	// lifecycle the host has left.
	lib.BeforeState(func() { apply(lib) })
	go follow(lib)
}

// applyMu makes taking an event and applying it one step: a status call
// that finds the queue empty knows every event queued before it has been
// applied.
var applyMu sync.Mutex

// follow applies the front's events for the life of the process. Its
// goroutine waits in C (front.Wait) and wakes only when the host did
// something the engine must know.
func follow(lib *service.Service) {
	for {
		front.Wait()
		apply(lib)
	}
}

// apply hands every queued event to the engine.
func apply(lib *service.Service) {
	applyMu.Lock()
	defer applyMu.Unlock()
	for {
		ev, ok := front.Poll()
		if !ok {
			return
		}
		eng := lib.Engine()
		if eng == nil {
			continue // the engine starts with the host's instance as it is
		}
		switch ev.Kind {
		case front.Initialized, front.Overflow:
			eng.HostInitialized()
		case front.Finalized:
			eng.HostFinalized()
		case front.HostError:
			if ev.Slot != front.NoSlot {
				eng.HostError(ev.Slot, probe.Status(ev.RV))
			}
		}
	}
}

func main() {}
