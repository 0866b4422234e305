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
	// Sockets is stage 2. Default: a sockChecker (sockstate.go), which scans this
	// process's descriptors (/proc/self/fd); it resolves TCP host names once,
	// in New, within half the Timeout.
	Sockets SocketChecker
	// OnTransition, when set, is called after a check for every member
	// whose verdict changed. It runs on the checking goroutine and must
	// not block.
	OnTransition func(Transition)
}

// SocketChecker is stage 2: it reports, for each endpoint, whether this
// process holds a healthy connection to it, and in fds the descriptor of
// that connection (-1 when unknown), which the next status call about the
// same slot polls for a hang-up before it starts the member's round ahead.
// It must only use read-only system calls and must not block.
type SocketChecker func(endpoints []conf.Endpoint, healthy []bool, fds []int)

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
}

// Engine checks the members of the configured groups. Its methods are safe
// for concurrent use.
type Engine struct {
	mod      *cryptoki.Module
	mode     mode
	timeout  time.Duration
	interval time.Duration
	sockets  SocketChecker
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
		sockets:  opts.Sockets,
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
	if e.sockets == nil {
		e.sockets = newSockChecker(all, e.timeout/2).Check
	}
	var ok bool
	if e.lanes, ok = newLanes(mod.Host(), len(e.members), e.timeout); !ok {
		return nil, fmt.Errorf("probe: cannot start %d member threads", len(e.members))
	}
	for _, m := range e.members {
		m.inst.changed = func(epoch uint64) { e.lanes.disarm(m.lane, epoch) }
	}
	return e, nil
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

// GroupForSlot returns the index of the group a slot names: the slot of a
// token whose serial is a group's serial (a vendor's virtual HA slot), or the
// slot of any member token (the first such group in file order).
//
// A slot the slot map does not know is asked about by itself, with
// C_GetTokenInfo on a goroutine waited for until the deadline (slotMap.ask),
// never by listing the slots: some modules (p11-kit's proxy) make
// C_GetSlotList a call to every member, holding a lock every other call of
// the process waits for, so a member that hangs would stall the host. An
// answer about the slot (CKR_SLOT_ID_INVALID, CKR_TOKEN_NOT_PRESENT,
// CKR_TOKEN_NOT_RECOGNIZED) or a token of no configured group is
// ErrUnknownSlot; CKR_CRYPTOKI_NOT_INITIALIZED (the host finalized the
// module) is ErrNotInitialized; no answer by the deadline, or any other, is
// ErrNotReady.
func (e *Engine) GroupForSlot(slot uint, deadline time.Time) (int, error) {
	t, ok := e.slots.lookup(slot)
	if !ok {
		var err error
		if t, err = e.slots.ask(slot, deadline, e.stop); err != nil {
			switch rv := cryptoki.RV(err); { // not the module's: CKR_GENERAL_ERROR
			case errors.Is(err, errBadSerial):
				return -1, ErrUnknownSlot
			case rv == ckrCryptokiNotInitialized:
				return -1, ErrNotInitialized
			case rv == ckrSlotIDInvalid || rv == ckrTokenNotPresent || rv == ckrTokenNotRecognized:
				return -1, ErrUnknownSlot
			default:
				return -1, fmt.Errorf("%w: %w", ErrNotReady, err)
			}
		}
	}
	for i := range e.conf {
		if e.conf[i].Serial == t.serial {
			return i, nil
		}
	}
	for i, g := range e.conf {
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
	return e.check(g, deadline, slotKey{}, out)
}

// CheckSlot is Check for a status call about slot, which group g serves:
// it takes the rounds the call's C entry point started ahead (lanes.h),
// and leaves the members that answer armed for the next call about slot.
func (e *Engine) CheckSlot(slot uint, g int, deadline time.Time, out []Verdict) []Verdict {
	return e.check(g, deadline, slotKey{slot: slot, ok: true}, out)
}

func (e *Engine) check(g int, deadline time.Time, key slotKey, out []Verdict) []Verdict {
	grp := &e.groups[g]
	n := len(grp.members)
	if cap(out) < n {
		out = make([]Verdict, n)
	}
	out = out[:n]
	start := time.Now()
	e.checks.RLock()
	defer e.checks.RUnlock()
	select {
	case <-e.stop: // closed (the library moved to another instance)
		for i, m := range grp.members {
			out[i] = Verdict{Serial: m.serial, SerialText: m.text, Status: StatusNoInstance}
		}
		return out
	default:
	}

	var st stage2
	grp.checkSockets(e.sockets, &st)
	var ready, unready []int
	var readyBuf, unreadyBuf [conf.MaxMembers]int
	ready, unready = readyBuf[:0], unreadyBuf[:0]
	for i, m := range grp.members {
		if m.isReady() {
			ready = append(ready, i)
		} else {
			unready = append(unready, i)
		}
	}
	// Right after Start, and after the host initialized the module again:
	// a member still in its resolution gets until the deadline, and its
	// round starts as soon as it is ready, without holding up the others.
	var wg sync.WaitGroup
	for _, i := range unready {
		grp.members[i].kick() // after HostInitialized, nothing has started it yet
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			e.awaitReady(grp.members[i], deadline)
			e.round(grp, []int{i}, &st, start, deadline, slotKey{}, out)
		}(i)
	}
	e.round(grp, ready, &st, start, deadline, key, out)
	wg.Wait()
	if e.finalized.Load() {
		for i := range out {
			out[i].Status = StatusNoInstance
		}
	}
	e.noteTransitions(grp, out)
	return out
}

// awaitReady waits until m has ended its resolution, or the deadline.
func (e *Engine) awaitReady(m *member, deadline time.Time) {
	ready, _ := m.readyState()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-ready:
	case <-timer.C:
	}
}

// round runs stages 1 to 3 for the members of grp at idx and writes their
// verdicts into out: one wait on the lanes for all of them.
func (e *Engine) round(grp *group, idx []int, st *stage2, start, deadline time.Time, key slotKey, out []Verdict) {
	var reqs [conf.MaxMembers]request
	var at [conf.MaxMembers]int
	k := 0
	for _, i := range idx {
		m := grp.members[i]
		v, ev, hasEv := m.inst.read()
		out[i] = Verdict{Serial: m.serial, SerialText: m.text, Slot: v.slot, HasSlot: v.hasSlot, Label: v.label}
		if v.serialText != "" {
			out[i].SerialText = v.serialText
		}
		if hasEv {
			out[i].Status, out[i].Took = ev, time.Since(start) // the host's own call said so
			continue
		}
		switch {
		case !m.isReady():
			out[i].Status = StatusTimeout
		case e.finalized.Load() || !v.usable(e.mode):
			out[i].Status = StatusNoInstance
		case !st.healthy[i]:
			out[i].Status = StatusSocketDown
		default:
			reqs[k] = request{lane: m.lane, mode: e.mode, slot: v.slot, session: v.session, epoch: v.epoch, fd: st.fd[i]}
			at[k] = i
			k++
			continue
		}
		out[i].Took = time.Since(start)
	}
	if k == 0 {
		// Every member failed stage 1 or 2: a host that finalized the
		// module closed every connection too. Ask the module, once; Check
		// then reports every member as no instance.
		if len(idx) > 0 && !e.finalized.Load() && e.moduleSaysFinalized(deadline) {
			e.moduleFinalized()
		}
		return
	}
	var res [conf.MaxMembers]result
	before := time.Since(start)
	e.lanes.check(reqs[:k], time.Until(deadline), key, res[:k])
	for j := 0; j < k; j++ {
		i, m := at[j], grp.members[at[j]]
		out[i].Status, out[i].Took = e.verdict(m, res[j]), before+res[j].took
	}
}

// verdict turns a lane's result into a member status, and starts recovery
// when the answer says the instance is gone: the session the answering
// round used, which may be older than the request's.
func (e *Engine) verdict(m *member, r result) Status {
	switch r.rv {
	case rvLate, rvStuck:
		return StatusTimeout
	case rvGate:
		return StatusNoInstance
	}
	if r.rv == ckrCryptokiNotInitialized {
		e.moduleFinalized()
		return StatusNoInstance
	}
	if dropsSession(r.rv) && m.inst.lose(e.mode, r.session, r.rv) {
		m.kick()
	}
	return r.rv
}

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

// stage2 is what stage 2 found for each member of a group: whether its
// connection is healthy, and which descriptor it is (-1: none or unknown).
type stage2 struct {
	healthy [conf.MaxMembers]bool
	fd      [conf.MaxMembers]int
}

// checkSockets runs stage 2 for the members that have an endpoint; members
// without one pass.
func (g *group) checkSockets(check SocketChecker, st *stage2) {
	var ok [conf.MaxMembers]bool
	var fds [conf.MaxMembers]int
	if len(g.endpoints) > 0 {
		check(g.endpoints, ok[:len(g.endpoints)], fds[:len(g.endpoints)])
	}
	for i, j := range g.epIndex {
		st.healthy[i], st.fd[i] = j < 0 || ok[j], -1
		if j >= 0 {
			st.fd[i] = fds[j]
		}
	}
}

func (e *Engine) noteTransitions(grp *group, out []Verdict) {
	if e.observe == nil {
		return
	}
	now := time.Now()
	for i, m := range grp.members {
		if old, first, changed := m.last.note(out[i].Status); changed {
			e.observe(Transition{
				Time: now, Group: grp.Label, GroupSerial: grp.Serial,
				Serial: m.serial, Old: old, New: out[i].Status, First: first,
			})
		}
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
