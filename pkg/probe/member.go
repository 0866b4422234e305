package probe

import (
	"sync"
	"time"

	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// member is one HSM of one or more groups, followed by its serial number.
// Its lightweight call runs on its lane (lanes.c), the only thread that
// makes it; its instance (stage 1) is kept up by its recovery worker, a
// goroutine that runs only while the member has no usable instance.
type member struct {
	serial uint64
	text   string // the serial as configured
	lane   int
	wake   chan struct{} // capacity 1: the recovery worker has work
	inst   instance
	last   lastVerdict

	readyMu  sync.Mutex
	ready    chan struct{} // closed when the resolution of readyGen has ended
	readyGen uint64        // counts unready: the host initialized the module again
}

func newMember(serial uint64, text string, lane int) *member {
	return &member{serial: serial, text: text, lane: lane, wake: make(chan struct{}, 1), ready: make(chan struct{})}
}

// unready makes the member wait for a new resolution (the host initialized
// the module again: slots may have moved, sessions are gone). The next
// status call kicks it and waits for it, as the first one does.
func (m *member) unready() {
	m.readyMu.Lock()
	defer m.readyMu.Unlock()
	m.readyGen++
	select {
	case <-m.ready:
		m.ready = make(chan struct{})
	default:
	}
}

// stillCurrent reports whether the member was not made unready since
// generation gen began.
func (m *member) stillCurrent(gen uint64) bool {
	m.readyMu.Lock()
	defer m.readyMu.Unlock()
	return gen == m.readyGen
}

// markReady ends the resolution of generation gen, unless the member was
// made unready since.
func (m *member) markReady(gen uint64) {
	m.readyMu.Lock()
	defer m.readyMu.Unlock()
	if gen != m.readyGen {
		return
	}
	select {
	case <-m.ready:
	default:
		close(m.ready)
	}
}

// kick tells the recovery worker there is work; it never blocks.
func (m *member) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// instance is stage 1: the member's slot, token label and monitor session.
type instance struct {
	mu sync.Mutex
	instanceView
	evidence    Status // what a host call on the member's slot answered, reported once
	hasEvidence bool
	stale       uint // a dropped session still to be closed by recovery
	hasStale    bool
	lastAttempt time.Time
	// changed, when set, is told every new epoch, outside mu: the engine
	// disarms the member's head start (lanes.h).
	changed func(epoch uint64)
}

func (in *instance) view() instanceView {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.instanceView
}

func (in *instance) set(v instanceView) {
	in.mu.Lock()
	v.epoch = in.epoch
	in.instanceView = v
	in.unlockChanged()
}

// unlockChanged starts a new epoch, unlocks mu and tells changed.
func (in *instance) unlockChanged() {
	in.epoch++
	epoch := in.epoch
	in.mu.Unlock()
	if in.changed != nil {
		in.changed(epoch)
	}
}

// invalidate starts a new epoch without changing the view (the module was
// finalized: no lightweight call made before is evidence any more).
func (in *instance) invalidate() {
	in.mu.Lock()
	in.unlockChanged()
}

// lose drops what a lightweight call's answer rv says is gone: the
// session it used (closed later by recovery unless the module already
// forgot it), or in the session-less modes the slot. It reports whether
// the instance changed.
func (in *instance) lose(md mode, session uint, rv Status) bool {
	in.mu.Lock()
	switch {
	case md == modeSession && in.hasSession && in.session == session:
		in.hasSession = false
		if !cryptoki.SessionDropped(uint(rv)) && rv != ckrCryptokiNotInitialized {
			in.stale, in.hasStale = session, true
		}
	case md != modeSession && in.hasSlot && (rv == ckrSlotIDInvalid || rv == ckrTokenNotPresent || rv == ckrDeviceRemoved):
		in.hasSlot = false
	default:
		in.mu.Unlock()
		return false
	}
	in.unlockChanged()
	return true
}

// forgetSession drops the monitor session without closing it (the module
// already forgot it); it reports whether there was one.
func (in *instance) forgetSession() bool {
	in.mu.Lock()
	had := in.hasSession
	if !had {
		in.mu.Unlock()
		return false
	}
	in.hasSession = false
	in.unlockChanged()
	return true
}

// witness records a host call's failure on slot: the next verdict reports
// it, and the instance is dropped so that recovery resolves the member
// again. It reports whether the member is on that slot.
func (in *instance) witness(slot uint, rv Status) bool {
	in.mu.Lock()
	if !in.hasSlot || in.slot != slot {
		in.mu.Unlock()
		return false
	}
	in.evidence, in.hasEvidence = rv, true
	if in.hasSession {
		in.stale, in.hasStale = in.session, true // closed by recovery if it still exists
		in.hasSession = false
	}
	in.hasSlot = false
	in.unlockChanged()
	return true
}

// forget drops the whole instance (the host initialized the module again:
// slots may have moved).
func (in *instance) forget() {
	in.mu.Lock()
	in.instanceView = instanceView{epoch: in.epoch}
	in.unlockChanged()
}

// beginAttempt records a recovery attempt and hands over a stale session.
func (in *instance) beginAttempt(now time.Time) (stale uint, ok bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.lastAttempt = now
	stale, ok = in.stale, in.hasStale
	in.hasStale = false
	return stale, ok
}

// retryIn returns how long until the next recovery attempt is due.
func (in *instance) retryIn(now time.Time, interval time.Duration) time.Duration {
	in.mu.Lock()
	defer in.mu.Unlock()
	return max(in.lastAttempt.Add(interval).Sub(now), 0)
}
