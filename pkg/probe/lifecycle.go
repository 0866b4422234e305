package probe

// What the engine learns of the host's lifecycle of the module: from a
// front module (HostInitialized, HostFinalized, HostError), or from a
// status call whose members all failed stages 1 and 2 (C_GetInfo), or a
// lightweight call that answered CKR_CRYPTOKI_NOT_INITIALIZED.

import (
	"time"

	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// HostInitialized is told by a front module that the host initialized the
// module: every member must be resolved again by serial (slots may have
// moved, sessions are gone). Nothing is called now: the next status call
// resolves the members and waits for them, as the first one does, so a
// host that initializes the module and exits finds no call of libhaext's
// inside it, and the first status call after is right for healthy members.
func (e *Engine) HostInitialized() {
	e.followsHost.Store(true)
	for _, m := range e.members {
		m.unready()
		m.inst.forget()
	}
	e.finalized.Store(false)
}

// HostFinalized is told by a front module that the host finalized the
// module: every member is CKR_HA_NO_INSTANCE, and nothing is called, until
// HostInitialized.
func (e *Engine) HostFinalized() {
	e.followsHost.Store(true)
	e.finalized.Store(true)
	for _, m := range e.members {
		m.inst.invalidate() // no call made before is evidence now
		m.inst.forgetSession()
	}
}

// HostError is told by a front module that a host call on slot failed with
// a connection-class rv (CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
// CKR_TOKEN_NOT_PRESENT, a dropped session): the next verdict of the member
// in that slot is rv, without a probe, and its recovery starts.
func (e *Engine) HostError(slot uint, rv Status) {
	for _, m := range e.members {
		if m.inst.witness(slot, rv) {
			m.kick()
		}
	}
}

// moduleSaysFinalized asks the module whether it is initialized: C_GetInfo
// on a goroutine of its own, one at a time (concurrent callers share the
// answer in flight), waited for until the deadline. Only
// CKR_CRYPTOKI_NOT_INITIALIZED says finalized; no answer by the deadline,
// or any other one (a module whose server died), does not. Some modules
// ask their server for C_GetInfo, so it never runs on the caller's thread.
func (e *Engine) moduleSaysFinalized(deadline time.Time) bool {
	e.infoMu.Lock()
	q := e.infoQuery
	if q == nil {
		q = &infoQuery{done: make(chan struct{})}
		e.infoQuery = q
		go func() {
			q.finalized = cryptoki.RV(e.mod.Info()) == ckrCryptokiNotInitialized
			e.infoMu.Lock()
			e.infoQuery = nil
			e.infoMu.Unlock()
			close(q.done)
		}()
	}
	e.infoMu.Unlock()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-q.done:
		return q.finalized
	case <-timer.C:
		return false
	}
}

// infoQuery is a C_GetInfo in flight for moduleSaysFinalized.
type infoQuery struct {
	done      chan struct{}
	finalized bool // valid once done is closed
}

// moduleFinalized records that the host finalized the module: every
// member's session went with it, and recovery waits for the host to
// initialize the module again (or, when the engine owns it, does so).
func (e *Engine) moduleFinalized() {
	if e.finalized.Swap(true) {
		return
	}
	for _, m := range e.members {
		m.inst.invalidate() // no call made before is evidence now
		if m.inst.forgetSession() {
			m.kick()
		}
	}
}
