// Package probe checks the members of HA groups of PKCS#11 tokens, all in
// parallel, in three stages: the driver instance (the member resolved to a
// slot, holding a monitor session), the socket (the process's connection to
// the member's endpoint is healthy), and one lightweight call
// (C_GetSessionInfo over the existing monitor session; C_GetTokenInfo when
// the engine holds no session).
//
// Each member has a lane: a C thread, parked until a status call releases
// every lane of its group with one broadcast, that makes the member's
// lightweight call (lanes.c). At most one call per member is in flight: a
// status call joins a running call, and a call running for longer than
// statusTimeout is not asked again, so a hung member pins exactly its lane
// however many callers ask. A status call never opens or closes a session;
// a member's recovery worker (recovery.go) does, and only while the member
// has no usable instance. An engine with every member healthy makes no
// vendor call and wakes no thread between status calls.
package probe

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// Errors returned by GroupForSlot.
var (
	// ErrUnknownSlot means the slot holds no token of a configured group.
	ErrUnknownSlot = errors.New("probe: slot names no configured HA group")
	// ErrNotReady means the slot could not be resolved before the
	// deadline: the module did not answer about it in time, or answered
	// with an error that says nothing about the slot, or too many queries
	// about unknown slots are in flight. The error wraps the reason.
	ErrNotReady = errors.New("probe: slot not resolved before the deadline")
	// ErrNotInitialized means the module is not initialized (the host
	// finalized it), so the slot cannot be resolved now.
	ErrNotInitialized = errors.New("probe: the vendor module is not initialized (the host finalized it)")
)

// Options tune an Engine. The zero value gives the documented defaults.
type Options struct {
	// Timeout is statusTimeout: how long a check waits for verdicts, and
	// how old a member's stuck call must be before the member is reported
	// StatusTimeout at once. Default conf.DefaultStatusTimeout.
	Timeout time.Duration
	// RecoveryInterval is the least time between two attempts to restore
	// one member's instance. Default 1 s.
	RecoveryInterval time.Duration
	// NoSession makes the engine hold no session at all: stage 3 is then
	// C_GetTokenInfo on the member's slot (conf: HAConfiguration
	// haExtMonitorSession = disabled).
	NoSession bool
	// Sockets is stage 2. Default: a sockChecker (sockstate.go), which
	// scans this process's descriptors (/proc/self/fd), resolves TCP host
	// names once, in New, within half the Timeout, and takes the poll a
	// status call's head start made. Members are started ahead without a
	// poll with any other.
	Sockets SocketChecker
	// OnTransition, when set, is called after a check for every member
	// whose verdict changed. It runs on the checking goroutine and must
	// not block.
	OnTransition func(Transition)
}

// SocketChecker is stage 2: it reports, for each endpoint, whether this
// process holds a healthy connection to it. It must only use read-only
// system calls and must not block.
type SocketChecker func(endpoints []conf.Endpoint, healthy []bool)

// stage2Check is stage 2 as a check runs it, with the status call's head
// start (its poll).
type stage2Check func(endpoints []conf.Endpoint, healthy []bool, head HeadStart)

// Transition is a change of one member's verdict.
type Transition struct {
	Time        time.Time
	Group       string // group label
	GroupSerial uint64
	Serial      uint64 // member serial
	Old, New    Status // Old is meaningless when First is set
	First       bool   // the member's first verdict
}

// Verdict is one member's line in a report.
type Verdict struct {
	Serial     uint64
	SerialText string // as the token reports it; as configured until it is resolved
	Status     Status
	Slot       uint          // the member's slot, when HasSlot
	HasSlot    bool          // the member has been resolved to a slot
	Label      string        // the member token's label, when known
	Took       time.Duration // from the start of the check to this verdict
}

// group is one configured HA group and what stage 2 needs of it.
type group struct {
	*conf.Group
	members   []*member
	endpoints []conf.Endpoint // of the members that have one
	epIndex   []int           // per member: index into endpoints, or -1
	table     []int           // per member: its endpoint in stage 2's table, or -1
}

// Engine checks the members of the configured groups. Its methods are safe
// for concurrent use.
type Engine struct {
	mod      *cryptoki.Module
	mode     mode
	timeout  time.Duration
	interval time.Duration
	sockets  stage2Check
	observe  func(Transition)

	conf    []conf.Group
	groups  []group
	members []*member // one per distinct serial; members[i] runs on lane i
	slots   *slotMap
	lanes   lanes

	reinitMu   sync.Mutex
	lastReinit time.Time
	// finalized is set when a lightweight call found the module not
	// initialized (the host finalized it), and cleared when recovery gets
	// an answer from it again: until then every member is no instance.
	finalized atomic.Bool
	// followsHost is set once a front module reported the host's
	// lifecycle (HostFinalized, HostInitialized): the engine then learns
	// of a new C_Initialize from the host and does not poll the module.
	followsHost atomic.Bool
	infoMu      sync.Mutex
	infoQuery   *infoQuery // the C_GetInfo in flight, if any

	checks               sync.RWMutex // Close waits for the checks in flight
	startOnce, closeOnce sync.Once
	quiet                bool // set by Close
	stop                 chan struct{}
	workers              sync.WaitGroup
}

// New returns an Engine for the groups over the module. Groups must satisfy
// conf's rules (1 to conf.MaxMembers members each). Call Start before Check.
func New(mod *cryptoki.Module, groups []conf.Group, opts Options) (*Engine, error) {
	e := &Engine{
		mod:      mod,
		mode:     modeSession,
		timeout:  opts.Timeout,
		interval: opts.RecoveryInterval,
		observe:  opts.OnTransition,
		conf:     append([]conf.Group(nil), groups...),
		stop:     make(chan struct{}),
	}
	switch {
	case opts.NoSession:
		e.mode = modeToken
	case mod.LendsSessions():
		e.mode = modeBorrow
	}
	if e.timeout <= 0 {
		e.timeout = conf.DefaultStatusTimeout
	}
	if e.interval <= 0 {
		e.interval = time.Second
	}
	e.slots = newSlotMap(mod, e.timeout)
	e.slots.hold = e.holdSlotList
	all := e.makeGroups()
	var sc *sockChecker
	if opts.Sockets == nil {
		sc = newSockChecker(all, e.timeout/2)
		e.sockets = sc.check
	} else {
		e.sockets = func(eps []conf.Endpoint, healthy []bool, _ HeadStart) { opts.Sockets(eps, healthy) }
	}
	var ok bool
	if e.lanes, ok = newLanes(mod.Host(), len(e.members), sc.size(), e.timeout); !ok {
		return nil, fmt.Errorf("probe: cannot start %d member threads", len(e.members))
	}
	for _, m := range e.members {
		m.inst.changed = func(epoch uint64) { e.lanes.disarm(m.lane, epoch) }
	}
	if sc != nil {
		sc.remember(e.lanes.fds())
	}
	for gi := range e.groups {
		g := &e.groups[gi]
		for _, j := range g.epIndex {
			g.table = append(g.table, sc.endpointAt(g.endpoints, j))
		}
	}
	return e, nil
}

// makeGroups makes the engine's groups and members (one per distinct
// serial) and returns every group's endpoints.
func (e *Engine) makeGroups() []conf.Endpoint {
	var all []conf.Endpoint
	bySerial := make(map[uint64]*member)
	for gi := range e.conf {
		g := group{Group: &e.conf[gi]}
		for _, gm := range g.Members {
			m := bySerial[gm.Serial]
			if m == nil {
				m = newMember(gm.Serial, gm.SerialText, len(e.members))
				bySerial[gm.Serial] = m
				e.members = append(e.members, m)
			}
			g.members = append(g.members, m)
			idx := -1
			if gm.Endpoint != nil {
				idx = len(g.endpoints)
				g.endpoints = append(g.endpoints, *gm.Endpoint)
			}
			g.epIndex = append(g.epIndex, idx)
		}
		all = append(all, g.endpoints...)
		e.groups = append(e.groups, g)
	}
	return all
}

// Start reads the module's slots and resolves every member, in the
// background; checks made before a member's first resolution ends wait for
// it up to their deadline. Start is idempotent.
func (e *Engine) Start() {
	e.startOnce.Do(func() {
		e.lanes.lead()
		e.slots.refresh()
		for _, m := range e.members {
			e.workers.Add(1)
			go e.recoveryWorker(m)
			m.kick()
		}
	})
}

// Close stops the engine and closes the monitor sessions of members whose
// worker is idle, waiting at most Timeout for the engine's vendor calls in
// flight. A lane or worker stuck in a vendor call exits when the call
// returns; Quiet tells whether one was.
func (e *Engine) Close() {
	e.closeOnce.Do(func() {
		close(e.stop)
		e.lanes.unlead()
		e.checks.Lock() // no check in flight uses the lanes any more
		e.lanes.stop()
		e.checks.Unlock()
		deadline := time.Now().Add(e.timeout)
		done := make(chan struct{})
		go func() {
			e.workers.Wait()
			close(done)
		}()
		timer := time.NewTimer(e.timeout)
		defer timer.Stop()
		workersDone := false
		select {
		case <-done:
			workersDone = true
		case <-timer.C:
		}
		e.quiet = e.lanes.waitIdle(time.Until(deadline)) && workersDone
		e.lanes.release()
	})
}

// Stuck returns how many members have a call in flight older than
// statusTimeout (0 once the engine is closed).
func (e *Engine) Stuck() int {
	e.checks.RLock()
	defer e.checks.RUnlock()
	select {
	case <-e.stop:
		return 0
	default:
		return e.lanes.stuck()
	}
}

// Quiet reports, after Close, whether none of the engine's vendor calls was
// still in flight when Close returned: only then may the module be
// finalized.
func (e *Engine) Quiet() bool { return e.quiet }

// Timeout returns the engine's statusTimeout.
func (e *Engine) Timeout() time.Duration { return e.timeout }

// Groups returns the configured groups, in file order; the index of a group
// is what GroupForSlot returns and Check takes.
func (e *Engine) Groups() []conf.Group { return e.conf }

// holdSlotList reports whether the slot map must not list the slots now:
// while a member's call is stuck (some modules, p11-kit's proxy, make
// C_GetSlotList wait for every member while holding a lock every other call
// of the process takes), and once the engine is closed.
func (e *Engine) holdSlotList() bool {
	e.checks.RLock()
	defer e.checks.RUnlock()
	select {
	case <-e.stop:
		return true
	default:
		return e.lanes.stuck() > 0
	}
}

// WantProcs is the GOMAXPROCS a program should run the engine with: every
// host thread inside a status call holds a Go P while it waits for the
// lanes, until the runtime's monitor hands the P on (after up to 10 ms in
// an idle program), so with fewer Ps than concurrent callers plus the
// recovery workers the calls queue for a P. Idle Ps cost nothing.
func (e *Engine) WantProcs() int { return runtime.NumCPU() + len(e.members) }

// Launch is how a program starts an engine over a module: New, then
// GOMAXPROCS raised to WantProcs unless the operator chose it with the
// GOMAXPROCS environment variable (read with getenv), then Start. Both
// libhaext.so and hastatus start their engine this way.
func Launch(mod *cryptoki.Module, groups []conf.Group, opts Options, getenv func(string) string) (*Engine, error) {
	e, err := New(mod, groups, opts)
	if err != nil {
		return nil, err
	}
	if getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < e.WantProcs() {
		runtime.GOMAXPROCS(e.WantProcs())
	}
	e.Start()
	return e, nil
}
