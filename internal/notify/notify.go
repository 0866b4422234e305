// Package notify turns the reports of status calls into the member state
// changes of CA_HAExtSetStateCallback (include/cryptoki_ha.h).
//
// A Notifier knows, per HA group (by its serial), whether the application
// registered a callback, the status each member had in the last report
// applied (its baseline), and, when the application asked for one, the
// interval of the checks it makes on its own. Every report of the group,
// the host's status calls and those checks alike, goes through Observe,
// which compares each member's status, by member serial, with its
// baseline and hands every difference to the Deliver function, in order.
// The notifier never calls the application: Deliver queues the change for
// a dispatcher thread of its own (internal/capi, callback.c).
//
// Rules:
//
//   - The first report applied after a group's registration delivers
//     nothing: it is the baseline. (The application has the state at that
//     moment from a status call of its own; an old status before it would
//     be made up.) Re-registering a group keeps its baseline.
//   - Reports are applied in the order their checks started: a report
//     whose check started before that of the last report applied is
//     older news and is not compared, so two overlapping checks cannot
//     make a member flap.
//   - With an interval, one goroutine per group checks at once and then
//     every interval; a check never overlaps the next one of the same
//     goroutine. Unregistering stops it: with no callback registered there
//     is no goroutine and no timer.
package notify

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/libhaext/libhaext/pkg/probe"
)

// The bounds of an interval other than 0 (0: no checks of the library's
// own).
const (
	MinInterval = 100 * time.Millisecond
	MaxInterval = time.Hour
)

// Change is a change of one member's status between two reports.
type Change struct {
	Group      uint64 // the group's serial
	Serial     uint64 // the member's serial
	SerialText string // as the report gives it (as the token reports it, once resolved)
	Old, New   probe.Status
}

// Deliver hands a change on. It runs under the notifier's lock, in the
// order of the changes, and must not block.
type Deliver func(Change)

// Check makes one status call about slot, as the host's would (the same
// engine path: at most one call in flight per member holds), and gives
// its report to Observe.
type Check func(slot uint)

// Notifier follows the groups that have a callback registered. Its methods
// are safe for concurrent use.
type Notifier struct {
	deliver Deliver
	check   Check
	active  atomic.Int32 // len(watches), read without the lock

	mu      sync.Mutex
	watches map[uint64]*watch
	wg      sync.WaitGroup // interval goroutines, for Close
}

// watch is one group with a callback.
type watch struct {
	slot     uint
	interval time.Duration
	stop     chan struct{} // closed to stop the interval goroutine; nil without one
	last     map[uint64]probe.Status
	based    bool      // last holds the baseline
	at       time.Time // the start of the check of the last report applied
}

// New returns a Notifier that hands changes to deliver and makes the
// interval checks with check.
func New(deliver Deliver, check Check) *Notifier {
	return &Notifier{deliver: deliver, check: check, watches: map[uint64]*watch{}}
}

// Active reports whether any group has a callback registered; Observe is
// a no-op while none has.
func (n *Notifier) Active() bool { return n.active.Load() != 0 }

// Set registers, or replaces, the callback of group, named by slot, with
// checks every interval (0: none of the notifier's own). apply runs under
// the notifier's lock, so that no change of the group is delivered between
// the registration and what apply records (the callback itself, in C). A
// replaced registration keeps the group's baseline; its interval goroutine
// is stopped and, with an interval, a new one checks at once.
func (n *Notifier) Set(group uint64, slot uint, interval time.Duration, apply func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	w := n.watches[group]
	if w == nil {
		w = &watch{last: map[uint64]probe.Status{}}
		n.watches[group] = w
		n.active.Store(int32(len(n.watches)))
	}
	if w.stop != nil {
		close(w.stop)
		w.stop = nil
	}
	w.slot, w.interval = slot, interval
	if interval > 0 {
		w.stop = make(chan struct{})
		n.wg.Add(1)
		go n.every(slot, interval, w.stop)
	}
	if apply != nil {
		apply()
	}
}

// Clear unregisters the callback of group, if any, and stops its interval
// goroutine (a check it has in flight ends on its own, and its report
// changes nothing). apply runs under the notifier's lock. It reports
// whether the group had a callback.
func (n *Notifier) Clear(group uint64, apply func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	w := n.watches[group]
	if w != nil {
		if w.stop != nil {
			close(w.stop)
		}
		delete(n.watches, group)
		n.active.Store(int32(len(n.watches)))
	}
	if apply != nil {
		apply()
	}
	return w != nil
}

// GroupOf returns the group whose callback was registered with slot, if
// any: unregistering needs no call to the module.
func (n *Notifier) GroupOf(slot uint) (uint64, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for g, w := range n.watches {
		if w.slot == slot {
			return g, true
		}
	}
	return 0, false
}

// Observe applies a report on group whose check started at start: every
// member whose status differs from its baseline is delivered, in the
// order of the report, and becomes the new baseline.
func (n *Notifier) Observe(start time.Time, group uint64, verdicts []probe.Verdict) {
	if n.active.Load() == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	w := n.watches[group]
	if w == nil || start.Before(w.at) {
		return
	}
	w.at = start
	for _, v := range verdicts {
		old, known := w.last[v.Serial]
		w.last[v.Serial] = v.Status
		if w.based && known && old != v.Status {
			n.deliver(Change{Group: group, Serial: v.Serial, SerialText: v.SerialText, Old: old, New: v.Status})
		}
	}
	w.based = true
}

// every checks slot at once and then every interval until stop is closed.
func (n *Notifier) every(slot uint, interval time.Duration, stop chan struct{}) {
	defer n.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		default:
		}
		n.check(slot)
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// Close unregisters every group and waits for the interval goroutines to
// end (tests).
func (n *Notifier) Close() {
	n.mu.Lock()
	for g, w := range n.watches {
		if w.stop != nil {
			close(w.stop)
		}
		delete(n.watches, g)
	}
	n.active.Store(0)
	n.mu.Unlock()
	n.wg.Wait()
}
