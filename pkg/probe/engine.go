// Package probe checks the members of HA groups of PKCS#11 tokens, all in
// parallel, in three stages: the driver instance (the member resolved to a
// slot and holding a monitor session), the socket (the process's connection
// to the member's endpoint is healthy), and one lightweight call
// (C_GetSessionInfo) over the existing monitor session.
//
// An Engine opens one read-only monitor session per member when it starts
// and re-opens a lost one from a background recovery loop; a status check
// never opens or closes a session. Each member has one worker goroutine that
// alone makes the member's vendor calls, so at most one call per member is in
// flight and a hung member pins at most one OS thread however many callers
// ask. Concurrent checks of one member share its current call.
package probe

import (
	"errors"
	"runtime"
	"sync"
	"time"

	"github.com/libhaext/libhaext/internal/sockstate"
	"github.com/libhaext/libhaext/pkg/conf"
)

// missRefreshInterval is the least time between a finished slot-map refresh
// and one a miss starts: a host that keeps asking for a wrong slot does not
// make the library scan the module on every call.
const missRefreshInterval = time.Second

// Errors returned by GroupForSlot.
var (
	// ErrUnknownSlot means the slot holds no token of a configured group.
	ErrUnknownSlot = errors.New("probe: slot names no configured HA group")
	// ErrNotReady means the slot could not be resolved before the deadline
	// because the module's slot list was still being read.
	ErrNotReady = errors.New("probe: slot map not ready before the deadline")
)

// Options tune an Engine. The zero value gives the documented defaults.
type Options struct {
	// Timeout is statusTimeout: how long a check waits for verdicts, and
	// how old a member's stuck call must be before the member is reported
	// CKR_HA_TIMEOUT at once. Default conf.DefaultStatusTimeout.
	Timeout time.Duration
	// RecoveryInterval is the least time between two attempts to re-open
	// one member's monitor session. Default 1 s.
	RecoveryInterval time.Duration
	// Sockets is stage 2. Default: a sockstate.Checker, which scans this
	// process's descriptors (/proc/self/fd); it resolves TCP host names once,
	// in New, within half the Timeout.
	Sockets SocketChecker
	// OnTransition, when set, is called after a check for every member
	// whose verdict changed. It runs on the checking goroutine and must
	// not block.
	OnTransition func(Transition)
}

// Transition is a change of one member's verdict.
type Transition struct {
	Time        time.Time
	Group       string // group label
	GroupSerial uint64
	Serial      uint64 // member serial
	Old, New    uint   // statuses; Old is meaningless when First is set
	First       bool   // the member's first verdict
}

// Verdict is one member's line in a report.
type Verdict struct {
	Serial  uint64
	Status  uint          // CKR_OK, a CKR_HA_* code, or the vendor's CK_RV
	Slot    uint          // the member's slot, when HasSlot
	HasSlot bool          // the member has been resolved to a slot
	Label   string        // the member token's label, when known
	Took    time.Duration // from the start of the check to this verdict
}

// Engine checks the members of the configured groups. Its methods are safe
// for concurrent use.
type Engine struct {
	mod      Module
	timeout  time.Duration
	interval time.Duration
	sockets  SocketChecker
	observe  func(Transition)

	groups    []conf.Group
	members   []*member   // one per distinct serial
	byGroup   [][]*member // members of each group, in configured order
	endpoints [][]conf.Endpoint
	epIndex   [][]int // per group and member: index into endpoints, or -1
	slots     *slotMap

	reinitMu   sync.Mutex
	lastReinit time.Time

	startOnce, closeOnce sync.Once
	stop                 chan struct{}
	workers              sync.WaitGroup
}

// New returns an Engine for the groups over the module. Groups must satisfy
// conf's rules (1 to conf.MaxMembers members each). Call Start before Check.
func New(mod Module, groups []conf.Group, opts Options) *Engine {
	e := &Engine{
		mod:      mod,
		timeout:  opts.Timeout,
		interval: opts.RecoveryInterval,
		sockets:  opts.Sockets,
		observe:  opts.OnTransition,
		groups:   append([]conf.Group(nil), groups...),
		stop:     make(chan struct{}),
	}
	if e.timeout <= 0 {
		e.timeout = conf.DefaultStatusTimeout
	}
	if e.interval <= 0 {
		e.interval = time.Second
	}
	e.slots = newSlotMap(mod, e.timeout)
	bySerial := make(map[uint64]*member)
	for _, g := range e.groups {
		ms := make([]*member, len(g.Members))
		idx := make([]int, len(g.Members))
		var eps []conf.Endpoint
		for i, gm := range g.Members {
			m := bySerial[gm.Serial]
			if m == nil {
				m = newMember(e, gm.Serial, gm.Endpoint)
				bySerial[gm.Serial] = m
				e.members = append(e.members, m)
			}
			ms[i] = m
			idx[i] = -1
			if gm.Endpoint != nil {
				idx[i] = len(eps)
				eps = append(eps, *gm.Endpoint)
			}
		}
		e.byGroup = append(e.byGroup, ms)
		e.endpoints = append(e.endpoints, eps)
		e.epIndex = append(e.epIndex, idx)
	}
	if e.sockets == nil {
		var all []conf.Endpoint
		for _, eps := range e.endpoints {
			all = append(all, eps...)
		}
		e.sockets = sockstate.NewChecker(all, e.timeout/2).Check
	}
	return e
}

// Start reads the module's slots and opens the monitor sessions, in the
// background; checks made before that finishes wait for it up to their
// deadline. It also starts the recovery loop. Start is idempotent.
func (e *Engine) Start() {
	e.startOnce.Do(func() {
		e.slots.refresh()
		for _, m := range e.members {
			m.wantRecover = true
			e.workers.Add(1)
			go m.run()
			m.kick()
		}
		e.workers.Add(1)
		go e.recoveryLoop()
	})
}

// Close stops the engine and closes the monitor sessions of members whose
// worker is idle, waiting at most Timeout for them. A worker stuck in a
// vendor call exits when the call returns.
func (e *Engine) Close() {
	e.closeOnce.Do(func() {
		close(e.stop)
		done := make(chan struct{})
		go func() {
			e.workers.Wait()
			close(done)
		}()
		timer := time.NewTimer(e.timeout)
		defer timer.Stop()
		select {
		case <-done:
		case <-timer.C:
		}
	})
}

// WantProcs is the GOMAXPROCS a program that owns its Go runtime should run
// the engine with: a member's lightweight call is a blocking cgo call, and a
// goroutine in a cgo call keeps its P until the runtime's monitor takes it
// back (after up to 10 ms in an idle program), so with fewer Ps than members
// the calls of one check run only a few at a time. With one P per member
// plus the CPUs, every member's call starts at once. libhaext.so and
// hastatus raise GOMAXPROCS to this; a Go program using the engine should
// do the same. Idle Ps cost nothing.
func (e *Engine) WantProcs() int { return runtime.NumCPU() + len(e.members) }

// Timeout returns the engine's statusTimeout.
func (e *Engine) Timeout() time.Duration { return e.timeout }

// Groups returns the configured groups, in file order; the index of a group
// is what GroupForSlot returns and Check takes.
func (e *Engine) Groups() []conf.Group { return e.groups }

// GroupForSlot returns the index of the group a slot names: the slot of a
// token whose serial is a group's serial (a vendor's virtual HA slot), or the
// slot of any member token (the first such group in file order). A slot the
// slot map does not know triggers a refresh (unless one finished within the
// last second), waited for until the deadline.
func (e *Engine) GroupForSlot(slot uint, deadline time.Time) (int, error) {
	t, ok := e.slots.lookup(slot)
	if !ok && !e.slots.recentlyRefreshed(missRefreshInterval) {
		finished := e.slots.find(deadline, e.stop, func() bool {
			_, ok := e.slots.lookup(slot)
			return ok
		})
		if t, ok = e.slots.lookup(slot); !ok && !finished {
			return -1, ErrNotReady
		}
	}
	if !ok {
		return -1, ErrUnknownSlot
	}
	for i := range e.groups {
		if e.groups[i].Serial == t.serial {
			return i, nil
		}
	}
	for i, g := range e.groups {
		for _, m := range g.Members {
			if m.Serial == t.serial {
				return i, nil
			}
		}
	}
	return -1, ErrUnknownSlot
}

// Check reports on every member of group g. It returns as soon as every
// member has a verdict; a member without one at the deadline is
// StatusTimeout. The verdicts are written to out, grown when too small.
func (e *Engine) Check(g int, deadline time.Time, out []Verdict) []Verdict {
	ms := e.byGroup[g]
	if cap(out) < len(ms) {
		out = make([]Verdict, len(ms))
	}
	out = out[:len(ms)]
	start := time.Now()

	var healthy [conf.MaxMembers]bool
	e.checkSockets(g, healthy[:len(ms)])

	var timer *time.Timer
	expired := false
	wait := func(ch <-chan struct{}) bool { // false when the deadline passed
		select {
		case <-ch:
			return true
		default:
		}
		if expired {
			return false
		}
		if timer == nil {
			timer = time.NewTimer(time.Until(deadline))
		}
		select {
		case <-ch:
			return true
		case <-timer.C:
			expired = true
			return false
		}
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()

	// Start or join every ready member's round, then give members still in
	// their first resolution (only right after Start) until the deadline,
	// then wait once for all the rounds.
	w := newWaiter()
	var gens [conf.MaxMembers]uint64
	var unready [conf.MaxMembers]chan struct{}
	for i, m := range ms {
		out[i] = Verdict{Serial: m.serial}
		out[i].Status, gens[i], unready[i] = m.begin(start, healthy[i], w)
	}
	for i, m := range ms {
		if unready[i] != nil && wait(unready[i]) {
			out[i].Status, gens[i], _ = m.begin(time.Now(), healthy[i], w)
		}
	}
	w.release()
	wait(w.done)
	for i, m := range ms {
		m.fill(&out[i], gens[i], start)
		if out[i].Took == 0 {
			out[i].Took = time.Since(start)
		}
	}
	e.noteTransitions(g, out)
	return out
}

// checkSockets runs stage 2 for the members of group g that have an
// endpoint; members without one pass.
func (e *Engine) checkSockets(g int, healthy []bool) {
	eps := e.endpoints[g]
	var ok [conf.MaxMembers]bool
	if len(eps) > 0 {
		e.sockets(eps, ok[:len(eps)])
	}
	for i, j := range e.epIndex[g] {
		healthy[i] = j < 0 || ok[j]
	}
}

func (e *Engine) noteTransitions(g int, out []Verdict) {
	if e.observe == nil {
		return
	}
	now := time.Now()
	grp := &e.groups[g]
	for i, m := range e.byGroup[g] {
		if old, first, changed := m.noteVerdict(out[i].Status); changed {
			e.observe(Transition{
				Time: now, Group: grp.Label, GroupSerial: grp.Serial,
				Serial: m.serial, Old: old, New: out[i].Status, First: first,
			})
		}
	}
}

// recoveryLoop asks the workers of members without a monitor session to
// re-open one, each at most once per RecoveryInterval.
func (e *Engine) recoveryLoop() {
	defer e.workers.Done()
	tick := time.NewTicker(min(e.interval/4, 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-e.stop:
			return
		case now := <-tick.C:
			for _, m := range e.members {
				if m.dueForRecovery(now, e.interval) {
					m.kick()
				}
			}
		}
	}
}

// reinitialize calls C_Initialize again after the module reported
// CKR_CRYPTOKI_NOT_INITIALIZED (someone finalized it), at most once a second.
// It reports whether the module is initialized as far as the engine knows.
func (e *Engine) reinitialize() bool {
	e.reinitMu.Lock()
	defer e.reinitMu.Unlock()
	if time.Since(e.lastReinit) < time.Second {
		return true
	}
	e.lastReinit = time.Now()
	return e.mod.Reinitialize() == nil
}
