package capi

// CA_HAExtSetStateCallback, the Go half: which group a registration is
// for, the interval checks, and the comparison of every report with the
// one before (internal/notify). The changes go to callback.c's queue; its
// dispatcher thread, with every signal blocked, calls the application.

/*
#include <stdint.h>
#include "callback.h"
*/
import "C"

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/libhaext/libhaext/internal/notify"
	"github.com/libhaext/libhaext/internal/service"
	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/probe"
)

// notifier follows the groups that have a callback; every report of such
// a group goes through it (observe). Set in init: intervalCheck uses it.
var notifier *notify.Notifier

func init() { notifier = notify.New(queueChange, intervalCheck) }

// queueChange hands a change to callback.c's dispatcher. The serial's bytes
// are copied there.
func queueChange(c notify.Change) {
	var p *C.char
	if len(c.SerialText) > 0 {
		p = (*C.char)(unsafe.Pointer(unsafe.StringData(c.SerialText)))
	}
	C.hx_cb_push(C.uint64_t(c.Group), p, C.size_t(len(c.SerialText)), C.CK_RV(c.Old), C.CK_RV(c.New))
}

// intervalCheck is one check of the library's own, every interval while a
// callback with one is registered: a status call as the host's, without a
// head start, whose report only the notifier reads. A panic ends the check,
// not the host.
func intervalCheck(slot uint) {
	defer func() { _ = recover() }()
	var buf [conf.MaxMembers]probe.Verdict
	start := time.Now()
	if r, err := lib.State(slot, probe.HeadStart{}, buf[:0]); err == nil {
		notifier.Observe(start, r.GroupSerial, r.Verdicts)
	}
}

// observeStart is the time a status call's report is compared at: its
// start, taken only while a callback is registered.
func observeStart() time.Time {
	if notifier.Active() {
		return time.Now()
	}
	return time.Time{}
}

// observe compares a status call's report with the one before when its
// group has a callback.
func observe(start time.Time, r service.Report) {
	if !start.IsZero() {
		notifier.Observe(start, r.GroupSerial, r.Verdicts)
	}
}

// haextSetCallback answers CA_HAExtSetStateCallback (callback.c's
// haext_set_callback, which holds its dispatcher for a registration and,
// after this returns, waits for a replaced callback to end). reg is the
// registration in C; Go hands it to hx_cb_set under the notifier's lock
// and never reads its fn or ctx.
//
//export haextSetCallback
func haextSetCallback(slotID C.CK_SLOT_ID, doRegister C.int, intervalMs C.CK_ULONG, reg *C.struct_hx_cb_reg,
	reason **C.char) (out C.CK_RV) {
	msg := ""
	defer func() { out = answer(out, msg, recover(), reason) }()
	out, msg = setCallback(uint(slotID), doRegister != 0, uint64(intervalMs), reg)
	return out
}

// setCallback registers or unregisters reg for the group slot names: an
// unregistration with the slot of a registration needs no call to the
// module; otherwise the slot is resolved as a status call would.
func setCallback(slot uint, register bool, intervalMs uint64, reg *C.struct_hx_cb_reg) (C.CK_RV, string) {
	if !register {
		if g, ok := notifier.GroupOf(slot); ok {
			notifier.Clear(g, func() { C.hx_cb_set(C.uint64_t(g), reg) })
			return C.CKR_OK, ""
		}
	}
	minMs, maxMs := uint64(notify.MinInterval.Milliseconds()), uint64(notify.MaxInterval.Milliseconds())
	if register && intervalMs != 0 && (intervalMs < minMs || intervalMs > maxMs) {
		return C.CKR_ARGUMENTS_BAD, fmt.Sprintf("intervalMs %d: 0 (no checks of libhaext's own), or %d to %d",
			intervalMs, minMs, maxMs)
	}
	g, err := lib.Group(slot)
	if err != nil {
		return returnValue(err), err.Error()
	}
	interval := time.Duration(intervalMs) * time.Millisecond
	apply := func() { C.hx_cb_set(C.uint64_t(g), reg) }
	if register {
		notifier.Set(g, slot, interval, apply)
	} else {
		notifier.Clear(g, apply)
	}
	return C.CKR_OK, ""
}
