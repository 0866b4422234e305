package probe

import (
	"errors"
	"sync"
	"time"

	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// errSlotBusy is returned when a C_GetTokenInfo on the slot is still in flight.
var errSlotBusy = errors.New("probe: token query already in flight for this slot")

// slotToken is what the module last said about the token in a slot.
type slotToken struct {
	serial uint64
	text   string // the serial as the token reports it
	label  string
}

// slotMap maps the module's slots to token serials. It is built when the
// engine starts and refreshed on a miss, in the background: one refresh at a
// time, and at most one C_GetTokenInfo in flight per slot, so a hung member
// pins no more than one extra thread however often callers miss.
type slotMap struct {
	mod  *cryptoki.Module
	wait time.Duration // how long a refresh waits for slow tokens

	mu         sync.Mutex
	tokens     map[uint]slotToken
	inflight   map[uint]bool
	running    bool
	again      bool          // a miss arrived during a running refresh
	started    uint64        // refresh generations started
	finished   uint64        // refresh generations finished
	changed    chan struct{} // closed and replaced whenever the map changes
	finishedAt time.Time
	err        error // the last C_GetSlotList error, if any
}

func newSlotMap(mod *cryptoki.Module, wait time.Duration) *slotMap {
	return &slotMap{
		mod:      mod,
		wait:     wait,
		tokens:   make(map[uint]slotToken),
		inflight: make(map[uint]bool),
		changed:  make(chan struct{}),
	}
}

// lookup returns the token last seen in a slot.
func (s *slotMap) lookup(slot uint) (slotToken, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[slot]
	return t, ok
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

// recentlyRefreshed reports whether a refresh finished within d.
func (s *slotMap) recentlyRefreshed(d time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.running && s.finished > 0 && time.Since(s.finishedAt) < d
}

func (s *slotMap) run() {
	for {
		s.scan()
		s.mu.Lock()
		s.finished++
		s.finishedAt = time.Now()
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
func (s *slotMap) scan() {
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

	results := make(chan struct{}, len(slots)) // late senders never block
	asked := 0
	for _, slot := range slots {
		if !s.claim(slot) {
			continue
		}
		asked++
		go func(slot uint) {
			s.query(slot)
			results <- struct{}{}
		}(slot)
	}
	timer := time.NewTimer(s.wait)
	defer timer.Stop()
	for ; asked > 0; asked-- {
		select {
		case <-results:
		case <-timer.C:
			return
		}
	}
}

// claim marks a slot as having a token query in flight, unless it has one.
func (s *slotMap) claim(slot uint) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight[slot] {
		return false
	}
	s.inflight[slot] = true
	return true
}

// query asks a claimed slot for its token and records the answer.
func (s *slotMap) query(slot uint) (slotToken, error) {
	text, label, err := s.mod.Token(slot)
	var t slotToken
	if err == nil {
		t.label, t.text = label, text
		t.serial, err = conf.ParseSerial(text)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inflight, slot)
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
	if !s.claim(slot) {
		return slotToken{}, errSlotBusy
	}
	return s.query(slot)
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
