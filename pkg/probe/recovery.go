package probe

import (
	"time"

	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// recoveryWorker keeps one member's instance: it resolves the member when
// kicked (at Start, and when a status call found the instance gone), and
// while the member stays without a usable instance it tries again once per
// RecoveryInterval. A member whose instance is usable costs no timer and no
// wakeup.
func (e *Engine) recoveryWorker(m *member) {
	defer e.workers.Done()
	var retry *time.Timer
	var retryC <-chan time.Time
	for {
		select {
		case <-e.stop:
			if retry != nil {
				retry.Stop()
			}
			e.closeSession(m)
			return
		case <-m.wake:
		case <-retryC:
			retryC = nil
		}
		if !m.inst.view().usable(e.mode) {
			if wait := m.inst.retryIn(time.Now(), e.interval); wait > 0 && m.isReady() {
				retry, retryC = rearm(retry, wait)
				continue
			}
			e.recover(m)
			if !m.inst.view().usable(e.mode) {
				if e.finalized.Load() && e.followsHost.Load() {
					// The host finalized the module: nothing to retry
					// until it initializes it again, which makes every
					// member wait for a new resolution (HostInitialized).
					continue
				}
				retry, retryC = rearm(retry, e.interval)
				continue
			}
		}
		// Usable: a retry still armed (the member was recovered after a
		// kick) would only wake this worker for nothing.
		if retryC != nil {
			retry.Stop()
			retryC = nil
		}
	}
}

// rearm (re)starts a timer for d.
func rearm(t *time.Timer, d time.Duration) (*time.Timer, <-chan time.Time) {
	if t == nil {
		t = time.NewTimer(d)
	} else {
		t.Reset(d)
	}
	return t, t.C
}

// recover restores the member's instance and ends its resolution, unless
// the host initialized the module again while it ran.
func (e *Engine) recover(m *member) {
	_, gen := m.readyState()
	v := e.attempt(m)
	e.noteInitialized()
	if !m.stillCurrent(gen) {
		// The host initialized the module again meanwhile: this attempt
		// saw the old instance. The status call that waits for the member
		// kicked it again; that attempt counts.
		if v.hasSession {
			_ = e.mod.CloseSession(v.session)
		}
		return
	}
	m.inst.set(v)
	m.markReady(gen)
}

// attempt resolves the member to a slot by serial and, in modeSession,
// opens its read-only monitor session.
func (e *Engine) attempt(m *member) instanceView {
	stale, hasStale := m.inst.beginAttempt(time.Now())
	if hasStale {
		_ = e.mod.CloseSession(stale) // best effort: the session may be gone
	}
	slot, token, ok := e.resolve(m.serial)
	if !ok {
		return instanceView{}
	}
	v := instanceView{slot: slot, hasSlot: true, label: token.label, serialText: token.text}
	if e.mode == modeSession {
		h, err := e.mod.OpenSession(slot)
		if cryptoki.RV(err) == ckrCryptokiNotInitialized && e.reinitialize() {
			h, err = e.mod.OpenSession(slot)
		}
		switch rv := Status(cryptoki.RV(err)); {
		case err == nil:
			v.session, v.hasSession = h, true
		case rv == ckrSlotIDInvalid || rv == ckrTokenNotPresent:
			e.slots.forget(slot)
		}
	}
	return v
}

// noteInitialized clears the finalized mark once the module answers again:
// the host initialized it, or this engine did (it owns the module). It
// runs on a recovery worker, never on a status call's thread.
func (e *Engine) noteInitialized() {
	if e.finalized.Load() && e.mod.Info() == nil {
		e.finalized.Store(false)
	}
}

// resolve finds the member's slot, initializing the module again first
// when this engine owns it and someone finalized it.
func (e *Engine) resolve(serial uint64) (uint, slotToken, bool) {
	slot, token, ok := e.slots.resolve(serial, e.timeout, e.stop)
	if !ok && e.slots.notInitialized() && e.reinitialize() {
		slot, token, ok = e.slots.resolve(serial, e.timeout, e.stop)
	}
	return slot, token, ok
}

// closeSession closes the monitor session when the engine stops.
func (e *Engine) closeSession(m *member) {
	v := m.inst.view()
	if v.hasSession {
		m.inst.set(instanceView{slot: v.slot, hasSlot: v.hasSlot, label: v.label, serialText: v.serialText})
		_ = e.mod.CloseSession(v.session)
	}
}

// reinitialize calls C_Initialize again after the module reported
// CKR_CRYPTOKI_NOT_INITIALIZED (someone finalized it), at most once a
// second. It reports whether the module is initialized as far as the
// engine knows.
func (e *Engine) reinitialize() bool {
	e.reinitMu.Lock()
	defer e.reinitMu.Unlock()
	if time.Since(e.lastReinit) < time.Second {
		return true
	}
	e.lastReinit = time.Now()
	return e.mod.Reinitialize() == nil
}
