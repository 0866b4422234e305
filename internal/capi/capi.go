// Package capi is the C ABI of libhaext: the CA_* entry points of
// include/cryptoki_ha.h. Their C definitions (capi.c) call the Go functions
// exported here, which check arguments, recover from panics and copy a
// report from internal/service into the caller's CK_HA_STATUS. Every shared
// library of the project links this package. The path of one call:
// CA_GetCurrentHAState (capi.c) -> haextState -> service.State ->
// probe.Engine.Check -> the member's worker -> cryptoki.Module.SessionInfo
// -> C_GetSessionInfo.
package capi

/*
#cgo CFLAGS: -I${SRCDIR}/../../include -I${SRCDIR}/../hostapi -Wall -Werror
#cgo pkg-config: p11-kit-1
#include <stdlib.h>
#include <string.h>
#include "cryptoki_ha.h"
#include "hostapi.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"sync"
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
	OpenModule: cryptoki.Open,
	Observe:    openHALog,
})

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
// copy of the environment is taken when the library loads.
func cGetenv(name string) string {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	if v := C.getenv(cname); v != nil {
		return C.GoString(v)
	}
	return ""
}

// lastError is the reason of the last failed call.
var lastError struct {
	sync.Mutex
	msg string
}

func setLastError(msg string) {
	lastError.Lock()
	defer lastError.Unlock()
	lastError.msg = msg
}

// rv maps a failed status call to its CK_RV, recording the reason: the
// only place where the library's errors become CK_RV values.
func rv(err error) C.CK_RV {
	setLastError(err.Error())
	switch {
	case errors.Is(err, probe.ErrUnknownSlot):
		return C.CKR_SLOT_ID_INVALID
	case errors.Is(err, service.ErrTransient):
		return C.CKR_FUNCTION_FAILED
	}
	return C.CKR_GENERAL_ERROR
}

// recoverTo turns a panic into CKR_GENERAL_ERROR with the reason recorded.
func recoverTo(out *C.CK_RV) {
	if r := recover(); r != nil {
		*out = rv(fmt.Errorf("internal error: %v", r))
	}
}

// haextState answers CA_GetCurrentHAState and the legacy CA_GetHAState
// (capi.c): the same engine serves both, so applications written for the
// legacy call get the parallel, session-free check without a change.
//
//export haextState
func haextState(slotID C.CK_SLOT_ID, pState C.CK_HA_STATE_PTR) (out C.CK_RV) {
	defer recoverTo(&out)
	if pState == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	var buf [conf.MaxMembers]probe.Verdict
	r, err := lib.State(uint(slotID), buf[:0])
	if err != nil {
		return rv(err)
	}
	if notice := lib.TakeNotice(); notice != "" {
		setLastError(notice) // said once, with the first report
	}
	fill(pState, r)
	return C.CKR_OK
}

// fill copies a report into the caller's CK_HA_STATUS.
func fill(pState C.CK_HA_STATE_PTR, r service.Report) {
	// Zero all of it, padding included, so that listSize reads right
	// through a CK_USHORT of either width.
	C.memset(unsafe.Pointer(pState), 0, C.sizeof_CK_HA_STATUS)
	pState.groupSerial = C.CK_ULONG(r.GroupSerial)
	for i, v := range r.Verdicts {
		pState.memberList[i].memberSerial = C.CK_ULONG(v.Serial)
		pState.memberList[i].memberStatus = C.CK_RV(v.Status)
	}
	pState.listSize = C.CK_USHORT(len(r.Verdicts))
}

// haextSetFunctionList answers CA_SetHAExtFunctionList (capi.c): the
// library then uses the host's own instance of the module.
//
//export haextSetFunctionList
func haextSetFunctionList(list C.CK_FUNCTION_LIST_PTR) (out C.CK_RV) {
	defer recoverTo(&out)
	if list == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	host := C.struct_haext_host{list: list}
	if err := lib.Lend(cryptoki.Lend(unsafe.Pointer(&host))); err != nil {
		return rv(err)
	}
	return C.CKR_OK
}

// haextLastError answers CA_GetHAExtLastError (capi.c): it copies the
// reason of the last failed call into buf.
//
//export haextLastError
func haextLastError(buf *C.char, size C.CK_ULONG) (n C.CK_ULONG) {
	defer func() {
		if recover() != nil {
			n = 0
		}
	}()
	lastError.Lock()
	msg := lastError.msg
	lastError.Unlock()
	if buf != nil && size > 0 {
		dst := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(size))
		k := copy(dst[:len(dst)-1], msg)
		dst[k] = 0
	}
	return C.CK_ULONG(len(msg))
}
