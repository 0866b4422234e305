// Package front is the C of libhaext-pkcs11.so, the PKCS#11 module a host
// loads instead of its vendor's, seen from Go for tests.
//
// libhaext-pkcs11.so is built from this directory's C files alone, with no
// Go in it (see the Makefile; front.h lists the files in their layers):
// plain C trampolines through the vendor's CK_FUNCTION_LIST (front.c,
// iface.c), so no Go runs on the path of a host call; the vendor found in C
// too (conf.c reads Chrystoki2/LibHAExtVendor, else LibUNIX64, else LibUNIX
// of the same configuration file as pkg/conf) and loaded with RTLD_DEEPBIND
// on the host's first C_GetFunctionList or C_Initialize (vendor.c); and the
// CA_* calls (ca.c), which load libhaext.so on the first of them and hand
// it struct haext_front (internal/hostapi/hostapi.h). A host that never
// calls CA_* never has the Go runtime in its process.
//
// The front keeps, in C, what the engine needs to share the host's instance
// of the vendor module: a gate that the host's C_Finalize closes and waits
// on (gate.c), the host's sessions and whether each is busy (table.c,
// busy.c), sessions lent for one call (loans.c, own.c, lend.c), and the
// events the engine applies (events.c; internal/capi/front.go). This
// package exposes them to Go tests: Host, Poll, Stats, and
// ParseConf, which tests compare with pkg/conf.
package front

/*
#cgo CFLAGS: -I${SRCDIR}/../hostapi -std=gnu11 -Wall -Wextra -Werror
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -ldl -lpthread
#include <stdlib.h>
#include "front.h"
#include "ha.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// Kind is what happened.
type Kind int

// The kinds of events.
const (
	// Initialized: the host's C_Initialize returned CKR_OK or
	// CKR_CRYPTOKI_ALREADY_INITIALIZED; the gate is open.
	Initialized Kind = C.HAEXT_EV_INITIALIZED
	// Finalized: the host's C_Finalize was forwarded and succeeded; every
	// session is gone and the gate is closed until the next Initialized.
	Finalized Kind = C.HAEXT_EV_FINALIZED
	// HostError: a call of the host's on Slot failed with RV, a
	// connection-class CK_RV (CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
	// CKR_TOKEN_NOT_PRESENT) or CKR_SESSION_HANDLE_INVALID /
	// CKR_SESSION_CLOSED for a session the host had open. Errors on one
	// slot coalesce until read (the newest RV wins).
	HostError Kind = C.HAEXT_EV_HOST_ERROR
	// Overflow: more events came than the queue holds (128) before they
	// were read; the oldest were dropped. Re-read the state of everything.
	Overflow Kind = C.HAEXT_EV_OVERFLOW
)

// NoSlot is the Slot of a HostError that names no slot (C_GetSlotList,
// C_WaitForSlotEvent, C_Initialize, or a session the front did not know).
const NoSlot = ^uint(0)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case Initialized:
		return "initialized"
	case Finalized:
		return "finalized"
	case HostError:
		return "host error"
	case Overflow:
		return "overflow"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Event is one thing the host did that the engine must know.
type Event struct {
	Kind Kind
	// Slot is the slot of a HostError, or NoSlot.
	Slot uint
	// RV is the CK_RV of a HostError.
	RV uint
}

// Poll returns the next event if one is queued.
func Poll() (Event, bool) {
	var ev C.struct_haext_front_event
	if C.front_events_poll(&ev) == 0 {
		return Event{}, false
	}
	return event(ev), true
}

func event(ev C.struct_haext_front_event) Event {
	return Event{Kind: Kind(ev.kind), Slot: uint(ev.slot), RV: uint(ev.rv)}
}

// Host loads the vendor module if the host has not made the front load it
// yet, and returns a pointer to the front's struct haext_vendor
// (internal/hostapi/hostapi.h): the vendor's function list and the hooks.
// It stays valid for the life of the process. It returns an error naming
// the configuration file and key when the vendor cannot be loaded; a later
// call tries again.
func Host() (unsafe.Pointer, error) {
	h := C.front_attach_vendor()
	if h == nil {
		return nil, errors.New(C.GoString(C.front_vendor_error()))
	}
	return unsafe.Pointer(h), nil
}

// VendorPath is the vendor module the front loads, as configured; empty
// before the first load attempt.
func VendorPath() string {
	return C.GoString(C.front_vendor_path())
}

// Stats are the front's counters.
type Stats struct {
	// OwnOpened and OwnClosed count the front's own read-only sessions.
	OwnOpened, OwnClosed uint64
	// LoansHost and LoansOwn count the sessions lent by borrow: the
	// host's, and the front's own.
	LoansHost, LoansOwn uint64
	// Backoffs counts loans of host sessions taken back because a host
	// call had just started on the session; HostWaits counts host calls
	// that waited for a loan of their session to be given back.
	Backoffs, HostWaits uint64
	// HostSessions is the number of the host's sessions in the table.
	HostSessions int64
}

// ReadStats returns the front's counters.
func ReadStats() Stats {
	var st C.struct_front_stats
	C.front_attach_stats(&st)
	return Stats{
		OwnOpened:    uint64(st.own_opened),
		OwnClosed:    uint64(st.own_closed),
		LoansHost:    uint64(st.loans_host),
		LoansOwn:     uint64(st.loans_own),
		Backoffs:     uint64(st.backoffs),
		HostWaits:    uint64(st.host_waits),
		HostSessions: int64(st.host_sessions),
	}
}

// ConfKeys are the module keys of the Chrystoki2 section as the C reader
// sees them; nil means absent.
type ConfKeys struct {
	Vendor, Unix64, Unix *string
}

// ParseConf runs the C reader of conf.c on the contents of a configuration
// file. Tests compare it with pkg/conf.
func ParseConf(data []byte) ConfKeys {
	var k C.struct_front_conf_keys
	p := C.CBytes(data)
	defer C.free(p)
	C.front_conf_parse((*C.char)(p), C.size_t(len(data)), &k)
	defer C.front_conf_keys_free(&k)
	str := func(c *C.char, n C.size_t) *string {
		if c == nil {
			return nil
		}
		s := C.GoStringN(c, C.int(n))
		return &s
	}
	return ConfKeys{Vendor: str(k.vendor, k.vendor_len), Unix64: str(k.unix64, k.unix64_len),
		Unix: str(k.unix32, k.unix32_len)}
}

// Module is the module the front loads for these keys: LibHAExtVendor,
// else LibUNIX64, else LibUNIX, the first that is not empty.
func (k ConfKeys) Module() string {
	for _, v := range []*string{k.Vendor, k.Unix64, k.Unix} {
		if v != nil && *v != "" {
			return *v
		}
	}
	return ""
}

// HAGroup is a group as the HA slot's C reader (haconf.c) sees it.
type HAGroup struct {
	NN      int
	Label   string
	Serial  string
	Members []uint64
}

// ParseHAGroups runs the C reader of conf_parse.c and haconf.c on the
// contents of a configuration file: the groups the HA slot would present.
// Tests compare them with pkg/conf's.
func ParseHAGroups(data []byte) []HAGroup {
	var k C.struct_front_conf_keys
	c := (*C.struct_front_ha_conf)(C.calloc(1, C.sizeof_struct_front_ha_conf))
	defer C.free(unsafe.Pointer(c))
	p := C.CBytes(data)
	defer C.free(p)
	C.front_conf_parse((*C.char)(p), C.size_t(len(data)), &k)
	defer C.front_conf_keys_free(&k)
	C.front_haconf_build(&k, c)
	out := make([]HAGroup, 0, int(c.ngroups))
	for i := 0; i < int(c.ngroups); i++ {
		g := &c.group[i]
		h := HAGroup{NN: int(g.nn), Label: C.GoString(&g.label[0]), Serial: C.GoString(&g.serial[0])}
		for m := 0; m < int(g.nmembers); m++ {
			h.Members = append(h.Members, uint64(g.member[m]))
		}
		out = append(out, h)
	}
	return out
}
