package probe

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// maxAsking is how many C_GetTokenInfo calls about slots the map does not
// know (ask) may be in flight at once: a host that asks about many distinct
// wrong slots while their answers hang pins at most this many threads.
const maxAsking = 8

var (
	// errSlotBusy is returned when a C_GetTokenInfo on the slot is still in flight.
	errSlotBusy = errors.New("probe: token query already in flight for this slot")
	// errAskingFull: maxAsking queries about unknown slots are in flight.
	errAskingFull = fmt.Errorf("probe: %d queries about unknown slots already in flight", maxAsking)
	// errQueryLate: the slot's C_GetTokenInfo had not answered by the deadline.
	errQueryLate = errors.New("probe: the slot's C_GetTokenInfo did not answer before the deadline")
	// errQueryStuck: the slot's C_GetTokenInfo has been in flight for
	// longer than statusTimeout; it is not waited for again.
	errQueryStuck = errors.New("probe: the slot's C_GetTokenInfo has not answered for longer than statusTimeout")
	// errClosed: the engine is closed and makes no more vendor calls.
	errClosed = errors.New("probe: engine closed")
	// errBadSerial: the token's serial number is not one libhaext can read,
	// so it is no configured group's.
	errBadSerial = errors.New("probe: unreadable token serial")
)

// slotQuery is one C_GetTokenInfo in flight on a slot. Whoever asks about
// the slot meanwhile waits for it instead of making a second call.
type slotQuery struct {
	started time.Time
	asked   bool          // started by ask: counts against maxAsking
	done    chan struct{} // closed when t and err are set
	t       slotToken
	err     error
}

// slotToken is what the module last said about the token in a slot.
type slotToken struct {
	serial uint64
	text   string // the serial as the token reports it
	label  string
}

// slotMap maps the module's slots to token serials. It lists the slots
// (C_GetSlotList, which some modules turn into a call to every member) only
// to resolve members: when the engine starts and when recovery looks for a
// member, one refresh at a time, and never while hold says so (a member's
// call is stuck). A slot it does not know is asked about by itself (ask).
// At most one C_GetTokenInfo is in flight per slot, and at most maxAsking
// about unknown slots, so a hung member pins no more than one extra thread
// however often callers miss.
type slotMap struct {
	mod  *cryptoki.Module
	wait time.Duration // how long a refresh waits for slow tokens; a query older is stuck
	// hold, when set, reports whether the slots must not be listed now.
	hold func() bool

	mu       sync.Mutex
	tokens   map[uint]slotToken
	inflight map[uint]*slotQuery
	asking   int // queries started by ask in flight
	running  bool
	again    bool          // a refresh was asked for during a running one
	started  uint64        // refresh generations started
	finished uint64        // refresh generations finished
	changed  chan struct{} // closed and replaced whenever the map changes
	err      error         // the last C_GetSlotList error, if any
}

func newSlotMap(mod *cryptoki.Module, wait time.Duration) *slotMap {
	return &slotMap{
		mod:      mod,
		wait:     wait,
		tokens:   make(map[uint]slotToken),
		inflight: make(map[uint]*slotQuery),
		changed:  make(chan struct{}),
	}
}

// slotOf returns the slot whose token has the serial.
func (s *slotMap) slotOf(serial uint64) (uint, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for slot, t := range s.tokens {
		if t.serial == serial {
			return slot, true
		}
	}
	return 0, false
}

// forget drops what is known of a slot.
func (s *slotMap) forget(slot uint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, slot)
}

// refresh starts a refresh generation that begins after this call and
// returns it.
func (s *slotMap) refresh() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		s.again = true
		return s.started + 1
	}
	s.running = true
	s.started++
	go s.run()
	return s.started
}

// signal wakes everyone watching the map; s.mu must be held.
func (s *slotMap) signal() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// watch waits until found reports true, refresh generation gen has
// finished, the deadline passed or stop closed. It is woken by every token
// the map learns, so a partial refresh is enough. It reports whether
// generation gen finished.
func (s *slotMap) watch(gen uint64, deadline time.Time, stop <-chan struct{}, found func() bool) bool {
	var timer *time.Timer
	for {
		s.mu.Lock()
		finished, ch := s.finished >= gen, s.changed
		s.mu.Unlock()
		if found() || finished {
			return finished
		}
		if timer == nil {
			timer = time.NewTimer(time.Until(deadline))
			defer timer.Stop()
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		case <-stop:
			return false
		}
	}
}

// find waits until found reports true: first for the refresh running now,
// if any, then for a new one. It reports whether the last refresh it waited
// for finished.
func (s *slotMap) find(deadline time.Time, stop <-chan struct{}, found func() bool) (finished bool) {
	s.mu.Lock()
	running, current := s.running, s.started
	s.mu.Unlock()
	if running {
		s.watch(current, deadline, stop, found)
		if found() {
			return true
		}
	}
	return s.watch(s.refresh(), deadline, stop, found)
}

// notInitialized reports whether the last C_GetSlotList said the module is
// not initialized (someone finalized it).
func (s *slotMap) notInitialized() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cryptoki.RV(s.err) == ckrCryptokiNotInitialized
}

func (s *slotMap) run() {
	for {
		s.scan()
		s.mu.Lock()
		s.finished++
		s.signal()
		if s.again {
			s.again = false
			s.started++
			s.mu.Unlock()
			continue
		}
		s.running = false
		s.mu.Unlock()
		return
	}
}

// scan lists the slots and asks each one for its token, all in parallel,
// waiting at most s.wait for slow ones; a late answer still lands in the map.
// While hold says so it lists nothing: the refresh learns nothing.
func (s *slotMap) scan() {
	if s.hold != nil && s.hold() {
		return
	}
	slots, err := s.mod.Slots()
	s.mu.Lock()
	s.err = err
	if err != nil {
		s.mu.Unlock()
		return
	}
	listed := make(map[uint]bool, len(slots))
	for _, slot := range slots {
		listed[slot] = true
	}
	for slot := range s.tokens {
		if !listed[slot] {
			delete(s.tokens, slot)
		}
	}
	s.mu.Unlock()

	// A slot with a query in flight (a status call asking about it, say)
	// is not asked again, but its answer is waited for like the others:
	// this refresh has not learned the slot before it comes.
	waits := make([]chan struct{}, 0, len(slots))
	for _, slot := range slots {
		q, mine := s.claimOrJoin(slot)
		waits = append(waits, q.done)
		if mine {
			go s.query(slot, q)
		}
	}
	timer := time.NewTimer(s.wait)
	defer timer.Stop()
	for _, done := range waits {
		select {
		case <-done:
		case <-timer.C:
			return
		}
	}
}

// claimOrJoin returns the slot's query in flight, or claims the slot for a
// new one, which the caller must make (mine).
func (s *slotMap) claimOrJoin(slot uint) (q *slotQuery, mine bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q = s.inflight[slot]; q != nil {
		return q, false
	}
	q = &slotQuery{started: time.Now(), done: make(chan struct{})}
	s.inflight[slot] = q
	return q, true
}

// claim marks a slot as having a token query in flight, unless it has one.
func (s *slotMap) claim(slot uint) (*slotQuery, bool) {
	q, mine := s.claimOrJoin(slot)
	if !mine {
		return nil, false
	}
	return q, true
}

// query asks a claimed slot for its token, records the answer, and hands
// it to whoever waits for q.
func (s *slotMap) query(slot uint, q *slotQuery) (slotToken, error) {
	text, label, err := s.mod.Token(slot)
	var t slotToken
	if err == nil {
		t.label, t.text = label, text
		if t.serial, err = conf.ParseSerial(text); err != nil {
			err = fmt.Errorf("%w %q: %w", errBadSerial, text, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inflight, slot)
	if q.asked {
		s.asking--
	}
	q.t, q.err = t, err
	close(q.done)
	if err != nil {
		// Forget the slot only when the answer is about the slot: a module
		// the host finalized, or a member that does not answer, says
		// nothing about which token the slot holds.
		if rv := cryptoki.RV(err); rv == ckrSlotIDInvalid || rv == ckrTokenNotPresent || rv == ckrTokenNotRecognized {
			delete(s.tokens, slot)
		}
		return t, err
	}
	s.tokens[slot] = t
	s.signal()
	return t, nil
}

// verify asks a slot for its token now, unless a query is in flight.
func (s *slotMap) verify(slot uint) (slotToken, error) {
	q, ok := s.claim(slot)
	if !ok {
		return slotToken{}, errSlotBusy
	}
	return s.query(slot, q)
}

// ask finds out which token a slot the map does not know holds, by asking
// that slot alone: C_GetTokenInfo on a goroutine, waited for until the
// deadline. It never lists the slots, so it never calls a member that is
// not in the slot. A query on the slot in flight is joined, not repeated,
// and one older than s.wait (stuck) is not waited for; past maxAsking
// queries in flight no new one starts (errAskingFull). An answer is
// recorded in the map as a refresh's would be. The error is the module's
// (a *cryptoki.Error), or errBadSerial, or one that says no answer came.
func (s *slotMap) ask(slot uint, deadline time.Time, stop <-chan struct{}) (slotToken, error) {
	select {
	case <-stop:
		return slotToken{}, errClosed
	default:
	}
	s.mu.Lock()
	q := s.inflight[slot]
	if q == nil {
		if s.asking >= maxAsking {
			s.mu.Unlock()
			return slotToken{}, errAskingFull
		}
		q = &slotQuery{started: time.Now(), asked: true, done: make(chan struct{})}
		s.inflight[slot] = q
		s.asking++
		go s.query(slot, q)
	}
	s.mu.Unlock()
	if time.Since(q.started) >= s.wait {
		select {
		case <-q.done:
			return q.t, q.err
		default:
			return slotToken{}, errQueryStuck
		}
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-q.done:
		return q.t, q.err
	case <-timer.C:
	case <-stop:
	}
	select { // an answer that came with the deadline still counts
	case <-q.done:
		return q.t, q.err
	default:
		return slotToken{}, errQueryLate
	}
}

// resolve finds the slot of the token with the serial: the slot map's
// answer, confirmed by asking the slot, else what a refresh learns. It waits
// at most wait and returns early when stop closes.
func (s *slotMap) resolve(serial uint64, wait time.Duration, stop <-chan struct{}) (slot uint, t slotToken, ok bool) {
	if slot, ok = s.slotOf(serial); ok {
		if t, err := s.verify(slot); err == nil && t.serial == serial {
			return slot, t, true
		}
	}
	s.find(time.Now().Add(wait), stop, func() bool {
		_, ok := s.slotOf(serial)
		return ok
	})
	if slot, ok = s.slotOf(serial); !ok {
		return 0, slotToken{}, false
	}
	t, _ = s.lookup(slot)
	return slot, t, true
}
