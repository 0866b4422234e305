package probe

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/libhaext/libhaext/pkg/conf"
)

// member is one HSM of one or more groups, followed by its serial number.
// Its worker goroutine is the only one that makes vendor calls for it, so at
// most one call per member is ever in flight, and a member whose call hangs
// pins at most one OS thread.
type member struct {
	e        *Engine
	serial   uint64
	endpoint *conf.Endpoint
	wake     chan struct{} // capacity 1: there is work for the worker

	mu sync.Mutex
	// Driver instance (stage 1).
	slot       uint
	hasSlot    bool
	label      string
	session    uint
	hasSession bool
	stale      uint // a dropped session still to be closed by recovery
	hasStale   bool
	// First resolution: status calls wait for it, up to their deadline.
	ready   bool
	readyCh chan struct{}
	// Recovery (background only).
	wantRecover bool
	lastAttempt time.Time
	// The lightweight call (stage 3): at most one round at a time. Status
	// calls that wait for the round register a waiter, told when it ends.
	roundActive  bool
	roundRunning bool
	roundStart   time.Time
	roundGen     uint64 // rounds started
	doneGen      uint64 // rounds finished
	waiters      []*waiter
	lastRV       uint
	lastDoneAt   time.Time
	// Last verdict reported, for transitions.
	lastVerdict uint
	haveVerdict bool
}

func newMember(e *Engine, serial uint64, ep *conf.Endpoint) *member {
	return &member{
		e:        e,
		serial:   serial,
		endpoint: ep,
		wake:     make(chan struct{}, 1),
		readyCh:  make(chan struct{}),
	}
}

// kick tells the worker there is work; it never blocks.
func (m *member) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// waiter is one status call waiting for its members' rounds: it is woken
// once, when the last of them ends, so a caller parks once per call however
// many members it checks.
type waiter struct {
	pending atomic.Int32
	done    chan struct{}
}

func newWaiter() *waiter {
	w := &waiter{done: make(chan struct{})}
	w.pending.Store(1) // the caller's own hold, released by release
	return w
}

// release drops the caller's hold, once every member is registered.
func (w *waiter) release() { w.arrive() }

func (w *waiter) arrive() {
	if w.pending.Add(-1) == 0 {
		close(w.done)
	}
}

// begin runs stages 1 and 2 for a status call started at now, and starts or
// joins the member's lightweight call, registering w to be told when that
// round ends. It returns a final status, or the round's number (gen > 0) to
// fill the verdict from once w is done. While the member's first resolution
// has not ended it does nothing and returns a channel closed when it does.
func (m *member) begin(now time.Time, socketOK bool, w *waiter) (status uint, gen uint64, unready chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.ready {
		return StatusTimeout, 0, m.readyCh
	}
	if !m.hasSession {
		return StatusNoInstance, 0, nil
	}
	if !socketOK {
		return StatusSocketDown, 0, nil
	}
	if m.roundActive {
		if now.Sub(m.roundStart) >= m.e.timeout {
			// The member's earlier call is stuck: do not ask again.
			return StatusTimeout, 0, nil
		}
	} else {
		m.roundActive = true
		m.roundStart = now
		m.roundGen++
		m.kick()
	}
	w.pending.Add(1)
	m.waiters = append(m.waiters, w)
	return 0, m.roundGen, nil
}

// fill completes a verdict of a status call started at start: for gen > 0
// the result of that round or a later one (StatusTimeout when none has
// ended) and how long it took, and the member's slot and label.
func (m *member) fill(v *Verdict, gen uint64, start time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gen > 0 {
		v.Status = StatusTimeout
		if m.doneGen >= gen {
			v.Status, v.Took = m.lastRV, max(m.lastDoneAt.Sub(start), 0)
		}
	}
	v.Slot, v.HasSlot, v.Label = m.slot, m.hasSlot, m.label
}

// run is the member's worker loop.
func (m *member) run() {
	defer m.e.workers.Done()
	for {
		select {
		case <-m.e.stop:
			m.closeSession()
			return
		case <-m.wake:
		}
		m.mu.Lock()
		doRecover := m.wantRecover
		m.wantRecover = false
		doProbe := m.roundActive && !m.roundRunning
		if doProbe {
			m.roundRunning = true
		}
		session := m.session
		m.mu.Unlock()
		if doRecover {
			m.recover()
		}
		if doProbe {
			m.probe(session)
		}
	}
}

// probe makes the lightweight call and publishes its result.
func (m *member) probe(session uint) {
	rv := RV(m.e.mod.SessionInfo(session))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastRV = rv
	m.lastDoneAt = time.Now()
	m.doneGen = m.roundGen
	m.roundActive, m.roundRunning = false, false
	for i, w := range m.waiters {
		w.arrive()
		m.waiters[i] = nil
	}
	m.waiters = m.waiters[:0]
	if dropsSession(rv) && m.hasSession && m.session == session {
		m.hasSession = false
		// A session that still exists on the token is closed by recovery;
		// one the module already forgot needs no closing.
		if rv != ckrSessionHandleInvalid && rv != ckrSessionClosed && rv != ckrCryptokiNotInitialized {
			m.stale, m.hasStale = session, true
		}
	}
}

// dueForRecovery marks the member for recovery when it has no monitor
// session and its last attempt is at least interval old.
func (m *member) dueForRecovery(now time.Time, interval time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hasSession || m.wantRecover || m.roundActive || now.Sub(m.lastAttempt) < interval {
		return false
	}
	m.wantRecover = true
	return true
}

// recover resolves the member to a slot by serial and opens its read-only
// monitor session. It runs on the worker only, never inside a status call.
func (m *member) recover() {
	e := m.e
	m.mu.Lock()
	m.lastAttempt = time.Now()
	stale, hasStale := m.stale, m.hasStale
	m.hasStale = false
	m.mu.Unlock()
	defer m.markReady()

	if hasStale {
		_ = e.mod.CloseSession(stale) // best effort: the session may be gone
	}
	slot, label, ok := e.slots.resolve(m.serial, e.timeout, e.stop)
	if !ok && e.slots.notInitialized() && e.reinitialize() {
		slot, label, ok = e.slots.resolve(m.serial, e.timeout, e.stop)
	}
	if !ok {
		m.setInstance(0, false, "", 0, false)
		return
	}
	h, err := e.mod.OpenSession(slot)
	if RV(err) == ckrCryptokiNotInitialized && e.reinitialize() {
		h, err = e.mod.OpenSession(slot)
	}
	if err != nil {
		if rv := RV(err); rv == ckrSlotIDInvalid || rv == ckrTokenNotPresent {
			e.slots.forget(slot)
		}
		m.setInstance(slot, true, label, 0, false)
		return
	}
	m.setInstance(slot, true, label, h, true)
}

func (m *member) setInstance(slot uint, hasSlot bool, label string, session uint, hasSession bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.slot, m.hasSlot, m.label = slot, hasSlot, label
	m.session, m.hasSession = session, hasSession
}

func (m *member) markReady() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.ready {
		m.ready = true
		close(m.readyCh)
	}
}

// closeSession closes the monitor session when the engine stops.
func (m *member) closeSession() {
	m.mu.Lock()
	h, ok := m.session, m.hasSession
	m.hasSession = false
	m.mu.Unlock()
	if ok {
		_ = m.e.mod.CloseSession(h)
	}
}

// noteVerdict records a verdict; it reports the previous one, whether this
// is the first, and whether the verdict changed.
func (m *member) noteVerdict(status uint) (old uint, first, changed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, first = m.lastVerdict, !m.haveVerdict
	m.lastVerdict, m.haveVerdict = status, true
	return old, first, first || old != status
}
