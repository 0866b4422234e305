package probe

// The status call in Go, top to bottom: the group the slot names, stages 1
// and 2, and the one call into C that runs stage 3 on the lanes (lanes.c).
// What a status call reads of members, instances and the slot map is here
// too; what changes them is in member.go, slots.go and recovery.go.

/*
#include "lanes.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// HeadStart is what a status call's C entry point did before it entered
// Go (lanes.h's struct hx_head, in the entry point's stack frame): the
// rounds it started, and stage 2's poll. The zero HeadStart is none
// (hastatus, tests).
type HeadStart struct{ h *C.struct_hx_head }

// HeadStartAt is the head start at p, a struct hx_head * the C entry point
// filled with hx_head_start.
func HeadStartAt(p unsafe.Pointer) HeadStart { return HeadStart{(*C.struct_hx_head)(p)} }

// Answer answers a status call about slot that began at start, whose C
// entry point made head: the serial of the group the slot names and its
// members' verdicts (written to out, grown when too small), by start plus
// statusTimeout. Its errors are GroupForSlot's. It takes the rounds the
// head start began, and leaves the members that answer armed for the next
// call about slot.
func (e *Engine) Answer(slot uint, head HeadStart, start time.Time, out []Verdict) (uint64, []Verdict, error) {
	deadline := start.Add(e.timeout)
	g, asked, err := e.groupForSlot(slot, deadline)
	if err != nil {
		return 0, nil, err
	}
	if asked && head.h != nil {
		head.h.polled = 0 // the head start's poll is as old as the question: stage 2 polls again
	}
	return e.conf[g].Serial, e.check(g, deadline, head, out), nil
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
	g, _, err := e.groupForSlot(slot, deadline)
	return g, err
}

// groupForSlot is GroupForSlot; asked tells that the slot map did not know
// the slot.
func (e *Engine) groupForSlot(slot uint, deadline time.Time) (g int, asked bool, err error) {
	t, ok := e.slots.lookup(slot)
	if !ok {
		if t, err = e.slots.ask(slot, deadline, e.stop); err != nil {
			switch rv := cryptoki.RV(err); { // not the module's: CKR_GENERAL_ERROR
			case errors.Is(err, errBadSerial):
				return -1, true, ErrUnknownSlot
			case rv == ckrCryptokiNotInitialized:
				return -1, true, ErrNotInitialized
			case rv == ckrSlotIDInvalid || rv == ckrTokenNotPresent || rv == ckrTokenNotRecognized:
				return -1, true, ErrUnknownSlot
			default:
				return -1, true, fmt.Errorf("%w: %w", ErrNotReady, err)
			}
		}
	}
	for i := range e.conf {
		if e.conf[i].Serial == t.serial {
			return i, !ok, nil
		}
	}
	for i, g := range e.conf {
		for _, m := range g.Members {
			if m.Serial == t.serial {
				return i, !ok, nil
			}
		}
	}
	return -1, !ok, ErrUnknownSlot
}

// Check reports on every member of group g. It returns as soon as every
// member has a verdict; a member without one at the deadline is
// StatusTimeout. The verdicts are written to out, grown when too small.
func (e *Engine) Check(g int, deadline time.Time, out []Verdict) []Verdict {
	return e.check(g, deadline, HeadStart{}, out)
}

func (e *Engine) check(g int, deadline time.Time, head HeadStart, out []Verdict) []Verdict {
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
	grp.checkSockets(e.sockets, head, &st)
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
			e.round(grp, []int{i}, &st, start, deadline, HeadStart{}, out)
		}(i)
	}
	e.round(grp, ready, &st, start, deadline, head, out)
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
func (e *Engine) round(grp *group, idx []int, st *stage2, start, deadline time.Time, head HeadStart, out []Verdict) {
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
			reqs[k] = request{lane: m.lane, mode: e.mode, slot: v.slot, session: v.session, epoch: v.epoch, ep: grp.table[i]}
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
	e.lanes.check(reqs[:k], time.Until(deadline), head, res[:k])
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
	case StatusOK:
		return StatusOK
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

// stage2 is what stage 2 found for each member of a group: whether its
// connection is healthy.
type stage2 struct {
	healthy [conf.MaxMembers]bool
}

// checkSockets runs stage 2 for the members that have an endpoint, with
// the answers of the status call's head start; members without one pass.
func (g *group) checkSockets(check stage2Check, head HeadStart, st *stage2) {
	var ok [conf.MaxMembers]bool
	if len(g.endpoints) > 0 {
		check(g.endpoints, ok[:len(g.endpoints)], head)
	}
	for i, j := range g.epIndex {
		st.healthy[i] = j < 0 || ok[j]
	}
}

// noteTransitions tells the observer (the HA log) of every member whose
// verdict changed.
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

// check runs one round for every request and waits at most wait: the one
// call into C of a status call (lanes.h, hx_lanes_check). For a status call
// (head) it takes the rounds the head start began, and arms the members
// that answered for the next one.
func (l lanes) check(reqs []request, wait time.Duration, head HeadStart, out []result) {
	var creq [conf.MaxMembers]C.struct_hx_req
	var cres [conf.MaxMembers]C.struct_hx_res
	if len(reqs) == 0 {
		return
	}
	for i, r := range reqs {
		creq[i] = C.struct_hx_req{lane: C.int(r.lane), mode: C.int(r.mode),
			slot: C.CK_SLOT_ID(r.slot), session: C.CK_SESSION_HANDLE(r.session),
			epoch: C.uint64_t(r.epoch), ep: C.int(r.ep)}
	}
	C.hx_lanes_check(l.p, &creq[0], C.int(len(reqs)), C.int64_t(max(wait, 0)), &cres[0], head.h)
	for i := range reqs {
		out[i] = result{rv: Status(cres[i].rv), took: time.Duration(cres[i].took_ns), session: uint(cres[i].session)}
	}
}

// What a status call reads of a member, its instance and the slot map.

// readyState returns the channel closed when the current resolution ends,
// and its generation.
func (m *member) readyState() (chan struct{}, uint64) {
	m.readyMu.Lock()
	defer m.readyMu.Unlock()
	return m.ready, m.readyGen
}

// isReady reports whether the member's resolution has ended (the first, or
// the one after the host initialized the module again).
func (m *member) isReady() bool {
	ready, _ := m.readyState()
	select {
	case <-ready:
		return true
	default:
		return false
	}
}

// instanceView is what a status call reads of an instance.
type instanceView struct {
	slot       uint
	hasSlot    bool
	label      string
	serialText string // as the token reports it
	session    uint
	hasSession bool
	epoch      uint64 // counts the changes of the instance
}

// usable reports whether stage 1 passes: in modeSession the member needs
// its monitor session, otherwise only its slot.
func (v instanceView) usable(md mode) bool {
	if md == modeSession {
		return v.hasSession
	}
	return v.hasSlot
}

// read returns what a status call needs of the instance: its view, and,
// once, what a host call on the member's slot answered (HostError).
func (in *instance) read() (v instanceView, evidence Status, hasEvidence bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	evidence, hasEvidence = in.evidence, in.hasEvidence
	in.hasEvidence = false
	return in.instanceView, evidence, hasEvidence
}

// lastVerdict is the member's last reported status, for transitions.
type lastVerdict struct {
	mu     sync.Mutex
	status Status
	have   bool
}

// note records a verdict; it reports the previous one, whether this is the
// first, and whether the verdict changed.
func (lv *lastVerdict) note(status Status) (old Status, first, changed bool) {
	lv.mu.Lock()
	defer lv.mu.Unlock()
	old, first = lv.status, !lv.have
	lv.status, lv.have = status, true
	return old, first, first || old != status
}

// lookup returns the token last seen in a slot.
func (s *slotMap) lookup(slot uint) (slotToken, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[slot]
	return t, ok
}
