// Package capi is the C ABI of libhaext: the CA_* entry points of
// include/cryptoki_ha.h. Their C definitions (capi.c) save the caller's
// signal mask, refuse fork children and keep the per-thread last error; they
// call haextState here, which checks arguments, recovers from panics and
// copies a report from internal/service into the caller's CK_HA_STATUS, in
// the layout the entry point serves. Every shared library of the project
// links this package. The path of one call: CA_GetCurrentHAState (capi.c)
// -> haext_status: hx_head_start (pkg/probe/lanes.c), then haextState ->
// report -> state -> service.State -> probe.Engine.Answer -> the lanes
// (pkg/probe/lanes.c) -> C_GetSessionInfo; then hx_head_end
// (docs/ARCHITECTURE.md, "The path of one call"). CA_HAExtSetStateCallback
// is callback.go and callback.c: every report of a group with a callback is
// compared with the one before (internal/notify), and the changes go to a C
// thread of the library's, which calls the application.
package capi

/*
#cgo CFLAGS: -I${SRCDIR}/../../include -I${SRCDIR}/../hostapi -I${SRCDIR}/../../pkg/probe -Wall -Werror
#cgo pkg-config: p11-kit-1
#define _GNU_SOURCE
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "cryptoki_ha.h"
#include "hostapi.h"
#include "lanes.h"

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
	"errors"
	"fmt"
	"os"
	"strconv"
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
	OpenModule: openModule,
	Observe:    openHALog,
})

func openModule(path string) (*cryptoki.Module, error) {
	if h := attachedHost(); h != nil {
		return cryptoki.Lend(h), nil
	}
	return cryptoki.Open(path)
}

// state is where capi meets internal/service: the report on the group slot
// names, or the CK_RV and reason of the failure. On success the reason is
// a notice the library has for the host (said once), or "".
func state(slot uint, head *C.struct_hx_head, out []probe.Verdict) (service.Report, C.CK_RV, string) {
	start := observeStart() // callback.go: only while a callback is registered
	r, err := lib.State(slot, probe.HeadStartAt(unsafe.Pointer(head)), out)
	if err != nil {
		return r, returnValue(err), err.Error()
	}
	observe(start, r)
	return r, C.CKR_OK, lib.TakeNotice()
}

// returnValue maps a failure to the CK_RV the call returns: the only place where the library's
// errors become CK_RV values.
func returnValue(err error) C.CK_RV {
	switch {
	case errors.Is(err, probe.ErrUnknownSlot):
		return C.CKR_SLOT_ID_INVALID
	case errors.Is(err, service.ErrTransient):
		return C.CKR_FUNCTION_FAILED
	}
	return C.CKR_GENERAL_ERROR
}

// openHALog starts the HA log when the configuration asks for one, logs the
// configuration's warnings to it and has it record every transition.
// Without haLogStatus or haLogToStdout the library writes nothing.
func openHALog(cfg *conf.Config, opts *probe.Options) {
	l := halog.New(cfg.HALog, nil) // nil: standard output through the SIGPIPE guard
	if l == nil {
		return
	}
	for _, w := range cfg.Warnings {
		l.Warning(w)
	}
	opts.OnTransition = l.Transition
}

// cGetenv reads the environment through the C library, so that a variable
// the host sets with setenv after loading the library is seen; Go's own
// copy of the environment is taken when the library loads. It is
// secure_getenv: in a setuid or setgid host, or one that gained
// capabilities (AT_SECURE), the environment belongs to the user who ran
// it, and every variable reads as unset, so that user cannot make the host
// load a module of their choice (ChrystokiConfigurationPath) with its
// privileges.
func cGetenv(name string) string {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	if v := C.secure_getenv(cname); v != nil {
		return C.GoString(v)
	}
	return ""
}

// haextState answers every status entry point (capi.c): CA_GetCurrentHAState
// and the legacy CA_GetHAState in the classic layout, their _SA6 twins in
// the SA6 layout. The same engine serves all, so applications written for
// the legacy call get the parallel, session-free check without a change.
// head is what capi.c's haext_status started before it called (the head
// start, in its stack frame). On a failure *reason is set to the reason,
// malloc'd; capi.c keeps it as the thread's last error.
//
//export haextState
func haextState(slotID C.CK_SLOT_ID, pState unsafe.Pointer, layout C.int, head *C.struct_hx_head,
	reason **C.char) (out C.CK_RV) {
	msg := ""
	defer func() { out = answer(out, msg, recover(), reason) }()
	out, msg = report(uint(slotID), pState, int(layout), head)
	return out
}

// answer is the common end of every export: a panic becomes
// CKR_GENERAL_ERROR, and a failure's reason (or a notice on success) goes
// to *reason, malloc'd, which capi.c keeps as the thread's last error.
func answer(rv C.CK_RV, msg string, panicked any, reason **C.char) C.CK_RV {
	if panicked != nil {
		rv, msg = C.CKR_GENERAL_ERROR, fmt.Sprintf("internal error: %v", panicked)
	}
	if rv != C.CKR_OK && msg == "" {
		msg = fmt.Sprintf("CK_RV 0x%08x", uint64(rv))
	}
	if msg != "" && reason != nil {
		*reason = C.CString(msg)
	}
	return rv
}

// report fills *pState, in the layout given, with the state of the group
// slot names.
func report(slot uint, pState unsafe.Pointer, layout int, head *C.struct_hx_head) (C.CK_RV, string) {
	if pState == nil {
		return C.CKR_ARGUMENTS_BAD, "pState is NULL"
	}
	var buf [conf.MaxMembers]probe.Verdict
	r, rv, msg := state(slot, head, buf[:0])
	if rv != C.CKR_OK {
		return rv, msg
	}
	if layout == C.HAEXT_LAYOUT_SA6 {
		fillSA6((*C.haext_status_sa6)(pState), r)
	} else {
		fillClassic((*C.CK_HA_STATUS)(pState), r)
	}
	return C.CKR_OK, msg
}

// haextSetFunctionList answers CA_SetHAExtFunctionList (capi.c): the
// library then uses the host's own instance of the module.
//
//export haextSetFunctionList
func haextSetFunctionList(list C.CK_FUNCTION_LIST_PTR, reason **C.char) (out C.CK_RV) {
	msg := ""
	defer func() { out = answer(out, msg, recover(), reason) }()
	if list == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	host := C.struct_haext_vendor{list: list}
	if err := lib.Lend(cryptoki.Lend(unsafe.Pointer(&host))); err != nil {
		out, msg = returnValue(err), err.Error()
		return out
	}
	return C.CKR_OK
}

// fillClassic writes the 528 bytes of the classic layout.
func fillClassic(st *C.CK_HA_STATUS, r service.Report) {
	// Zero all of it, padding included, so that listSize reads right
	// through a vendor's CK_USHORT of any width.
	C.memset(unsafe.Pointer(st), 0, C.sizeof_CK_HA_STATUS)
	st.groupSerial = C.CK_ULONG(r.GroupSerial)
	for i, v := range r.Verdicts {
		st.memberList[i].memberSerial = C.CK_ULONG(v.Serial)
		st.memberList[i].memberStatus = C.CK_RV(v.Status)
	}
	st.listSize = C.CK_USHORT(len(r.Verdicts))
}

// fillSA6 writes the 1056 bytes of the SA6 layout: the group serial in
// decimal (VirtualTokenNNSN) and each member's serial as its token reports
// it, NUL-padded.
func fillSA6(st *C.haext_status_sa6, r service.Report) {
	C.memset(unsafe.Pointer(st), 0, C.sizeof_haext_status_sa6)
	putText(&st.groupSerial, strconv.FormatUint(r.GroupSerial, 10))
	for i, v := range r.Verdicts {
		putText(&st.memberList[i].memberSerial, v.SerialText)
		st.memberList[i].memberStatus = C.CK_RV(v.Status)
	}
	st.listSize = C.CK_ULONG(len(r.Verdicts))
}

// putText copies text into a zeroed serial field, at most its 20 bytes
// (PKCS#11 serials have 16).
func putText(dst *[C.HAEXT_SA6_SERIAL]C.CK_CHAR, text string) {
	for i := 0; i < len(text) && i < len(dst); i++ {
		dst[i] = C.CK_CHAR(text[i])
	}
}
