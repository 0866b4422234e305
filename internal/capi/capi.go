// Package capi is the C ABI of libhaext: the CA_* entry points of
// include/cryptoki_ha.h. Their C definitions (capi.c) save the caller's
// signal mask, refuse fork children and keep the per-thread last error; they
// call haextState here, which checks arguments, recovers from panics and
// copies a report from internal/service into the caller's CK_HA_STATUS, in
// the layout the entry point serves. Every shared library of the project
// links this package. The path of one call: CA_GetCurrentHAState (capi.c)
// -> haext_status -> haextState -> state -> service.State ->
// probe.Engine.Check -> the member's worker -> cryptoki.Module.SessionInfo
// -> C_GetSessionInfo.
package capi

/*
#cgo CFLAGS: -I${SRCDIR}/../../include -Wall -Werror
#cgo pkg-config: p11-kit-1
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "cryptoki_ha.h"

// Layouts of CK_HA_STATUS an entry point serves.
enum { HAEXT_LAYOUT_CLASSIC = 0, HAEXT_LAYOUT_SA6 = 1 };

// The SA6 / Luna 7 layout (SafeNet Network HSM 6+): text serials of
// CK_TOKEN_SERIAL_NUMBER_SIZE + 4 = 20 bytes, NUL-padded. cryptoki_ha.h
// declares it under the application's names with LIBHAEXT_HA_LAYOUT_SA6;
// here it has its own, beside the classic one.
#define HAEXT_SA6_SERIAL 20
typedef struct {
	CK_CHAR memberSerial[HAEXT_SA6_SERIAL];
	CK_RV memberStatus;
} haext_member_sa6;
typedef struct {
	CK_CHAR groupSerial[HAEXT_SA6_SERIAL];
	haext_member_sa6 memberList[CK_HA_MAX_MEMBERS];
	CK_ULONG listSize;
} haext_status_sa6;

// The published sizes on LP64: the classic layout 528 bytes with listSize
// at 520, the SA6 layout 1056 with listSize at 1048.
typedef char haext_classic_is_528[sizeof(CK_ULONG) != 8 ||
	(sizeof(CK_HA_STATUS) == 528 && offsetof(CK_HA_STATUS, listSize) == 520) ? 1 : -1];
typedef char haext_sa6_is_1056[sizeof(CK_ULONG) != 8 ||
	(sizeof(haext_status_sa6) == 1056 && offsetof(haext_status_sa6, listSize) == 1048) ? 1 : -1];
*/
import "C"

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"unsafe"

	"github.com/libhaext/libhaext/internal/halog"
	"github.com/libhaext/libhaext/internal/service"
	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/cryptoki"
	"github.com/libhaext/libhaext/pkg/probe"
)

// lib is the process's one library instance; loading happens on first use.
var lib = service.New(service.Env{
	Getenv: cGetenv,
	Exists: func(path string) bool {
		st, err := os.Stat(path)
		return err == nil && st.Mode().IsRegular()
	},
	OpenModule: func(path string) (probe.Module, error) { return cryptoki.Open(path) },
	Observe:    observe,
})

// state is where capi meets internal/service: the report on the group slot
// names, or the CK_RV and reason of the failure.
func state(slot uint, out []probe.Verdict) (group uint64, verdicts []probe.Verdict, rv C.CK_RV, reason string) {
	group, verdicts, code := lib.State(slot, out)
	switch code {
	case service.RVOK:
		return group, verdicts, C.CKR_OK, ""
	case service.RVSlotIDInvalid:
		return 0, nil, C.CKR_SLOT_ID_INVALID, fmt.Sprintf("slot %d holds no token of a configured HA group", slot)
	}
	return 0, nil, C.CK_RV(code), lib.LastError()
}

// observe is called once the configuration is read, before the engine
// starts: it records the members' serial texts and starts the HA log.
func observe(cfg *conf.Config, opts *probe.Options) {
	noteSerialTexts(cfg)
	openHALog(cfg, opts)
}

// openHALog starts the HA log when the configuration asks for one, logs the
// configuration's warnings to it and has it record every transition.
// Without haLogStatus or haLogToStdout the library writes nothing.
func openHALog(cfg *conf.Config, opts *probe.Options) {
	l := halog.New(cfg.HALog, os.Stdout)
	if l == nil {
		return
	}
	for _, w := range cfg.Warnings {
		l.Warning(w)
	}
	opts.OnTransition = l.Transition
}

// serialTexts maps a member's serial to its text as VirtualTokenNNMembers
// gives it, which the README requires to be as the token reports it.
var serialTexts atomic.Pointer[map[uint64]string]

func noteSerialTexts(cfg *conf.Config) {
	m := make(map[uint64]string)
	for _, g := range cfg.Groups {
		for _, mem := range g.Members {
			m[mem.Serial] = mem.SerialText
		}
	}
	serialTexts.Store(&m)
}

// serialText is a member serial as text for the SA6 layout: the configured
// text, else decimal (which the configuration reads back as the same
// serial).
func serialText(serial uint64) string {
	if m := serialTexts.Load(); m != nil {
		if t, ok := (*m)[serial]; ok {
			return t
		}
	}
	return strconv.FormatUint(serial, 10)
}

// cGetenv reads the environment through the C library, so that a variable
// the host sets with setenv after loading the library is seen; Go's own
// copy of the environment is taken when the library loads.
func cGetenv(name string) string {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	if v := C.getenv(cname); v != nil {
		return C.GoString(v)
	}
	return ""
}

// haextState answers every status entry point (capi.c): CA_GetCurrentHAState
// and the legacy CA_GetHAState in the classic layout, their _SA6 twins in
// the SA6 layout. The same engine serves all, so applications written for
// the legacy call get the parallel, session-free check without a change.
// On a failure *reason is set to the reason, malloc'd; capi.c keeps it as the
// thread's last error.
//
//export haextState
func haextState(slotID C.CK_SLOT_ID, pState unsafe.Pointer, layout C.int, reason **C.char) (rv C.CK_RV) {
	msg := ""
	defer func() {
		if r := recover(); r != nil {
			rv, msg = C.CKR_GENERAL_ERROR, fmt.Sprintf("internal error: %v", r)
		}
		if rv != C.CKR_OK && reason != nil {
			if msg == "" {
				msg = fmt.Sprintf("CK_RV 0x%08x", uint64(rv))
			}
			*reason = C.CString(msg)
		}
	}()
	rv, msg = report(uint(slotID), pState, int(layout))
	return rv
}

// report fills *pState, in the layout given, with the state of the group
// slot names.
func report(slot uint, pState unsafe.Pointer, layout int) (C.CK_RV, string) {
	if pState == nil {
		return C.CKR_ARGUMENTS_BAD, "pState is NULL"
	}
	var buf [conf.MaxMembers]probe.Verdict
	group, verdicts, rv, reason := state(slot, buf[:0])
	if rv != C.CKR_OK {
		return rv, reason
	}
	if layout == C.HAEXT_LAYOUT_SA6 {
		fillSA6((*C.haext_status_sa6)(pState), group, verdicts)
	} else {
		fillClassic((*C.CK_HA_STATUS)(pState), group, verdicts)
	}
	return C.CKR_OK, ""
}

// fillClassic writes the 528 bytes of the classic layout.
func fillClassic(st *C.CK_HA_STATUS, group uint64, verdicts []probe.Verdict) {
	// Zero all of it, padding included, so that listSize reads right
	// through a vendor's CK_USHORT of any width.
	C.memset(unsafe.Pointer(st), 0, C.sizeof_CK_HA_STATUS)
	st.groupSerial = C.CK_ULONG(group)
	for i, v := range verdicts {
		st.memberList[i].memberSerial = C.CK_ULONG(v.Serial)
		st.memberList[i].memberStatus = C.CK_RV(v.Status)
	}
	st.listSize = C.CK_USHORT(len(verdicts))
}

// fillSA6 writes the 1056 bytes of the SA6 layout: the group serial in
// decimal (VirtualTokenNNSN) and each member's serial text, NUL-padded.
func fillSA6(st *C.haext_status_sa6, group uint64, verdicts []probe.Verdict) {
	C.memset(unsafe.Pointer(st), 0, C.sizeof_haext_status_sa6)
	putText(&st.groupSerial, strconv.FormatUint(group, 10))
	for i, v := range verdicts {
		putText(&st.memberList[i].memberSerial, serialText(v.Serial))
		st.memberList[i].memberStatus = C.CK_RV(v.Status)
	}
	st.listSize = C.CK_ULONG(len(verdicts))
}

// putText copies text into a zeroed serial field, at most its 20 bytes
// (PKCS#11 serials have 16).
func putText(dst *[C.HAEXT_SA6_SERIAL]C.CK_CHAR, text string) {
	for i := 0; i < len(text) && i < len(dst); i++ {
		dst[i] = C.CK_CHAR(text[i])
	}
}
