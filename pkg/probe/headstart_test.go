package probe

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/internal/fakep11"
	"github.com/libhaext/libhaext/pkg/conf"
)

// The head start (lanes.h): a status call's C entry point starts the
// members that answered last time, before Go runs stages 1 and 2, and the
// check takes those rounds instead of making calls of its own. What it did
// is handed to the check explicitly (HeadStart), so the check may run on
// any thread.

const headSlot = 10 // the slot the host asks about: member 0's, so group 0

// statusCall is what capi.c does for CA_GetCurrentHAState(headSlot).
func statusCall(e *Engine) []Verdict {
	h := headStart(headSlot)
	defer headEnd(h)
	return answer(e, h)
}

// answer is the Go side of a status call about headSlot.
func answer(e *Engine, h HeadStart) []Verdict {
	_, v, err := e.Answer(headSlot, h, time.Now(), nil)
	if err != nil {
		panic(err)
	}
	return v
}

// calls returns the lightweight calls each of the fake's first n tokens
// has answered.
func calls(f *fakep11.Module, n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = f.Token(uint(10 + i)).Infos.Load()
	}
	return out
}

func added(now, before []int32) []int32 {
	out := make([]int32, len(now))
	for i := range now {
		out[i] = now[i] - before[i]
	}
	return out
}

// headStarted runs the head start alone and checks the calls it made once
// they have settled; the caller ends it.
func headStarted(t *testing.T, f *fakep11.Module, n int, want []int32) HeadStart {
	t.Helper()
	before := calls(f, n)
	h := headStart(headSlot)
	require.Eventually(t, func() bool { return assert.ObjectsAreEqual(want, added(calls(f, n), before)) },
		2*time.Second, time.Millisecond, "calls made by the head start alone")
	time.Sleep(30 * time.Millisecond)
	assert.Equal(t, want, added(calls(f, n), before), "and no more")
	return h
}

func TestHeadStartCallsTheMembersBeforeGoRunsAndTheCheckTakesThoseRounds(t *testing.T) {
	f := fakep11.New(3)
	e := start(t, f, 3, Options{})
	check(e) // the first resolutions have ended
	assert.Equal(t, []Status{StatusOK, StatusOK, StatusOK}, statuses(statusCall(e)), "arms every member")

	before := calls(f, 3)
	h := headStarted(t, f, 3, []int32{1, 1, 1})
	done := make(chan []Verdict)
	go func() { done <- answer(e, h) }() // any thread: the head start is an argument
	v := <-done
	headEnd(h)
	assert.Equal(t, []Status{StatusOK, StatusOK, StatusOK}, statuses(v))
	assert.Equal(t, []int32{1, 1, 1}, added(calls(f, 3), before), "one call per member: the check took the head start's")

	before = calls(f, 3)
	assert.Equal(t, []Status{StatusOK, StatusOK, StatusOK}, statuses(statusCall(e)))
	assert.Equal(t, []int32{1, 1, 1}, added(calls(f, 3), before), "a whole status call makes one call per member")
}

func TestHeadStartOnlyForTheSlotAsked(t *testing.T) {
	f := fakep11.New(2)
	e := start(t, f, 2, Options{})
	check(e)
	statusCall(e)
	before := calls(f, 2)
	h := headStart(headSlot + 1)
	time.Sleep(30 * time.Millisecond)
	headEnd(h)
	assert.Equal(t, []int32{0, 0}, added(calls(f, 2), before), "no check about that slot yet: nothing to start")

	check(e) // a check that serves no status call (hastatus) leaves the plan alone
	headEnd(headStarted(t, f, 2, []int32{1, 1}))
}

func TestHeadStartSkipsAMemberWhoseInstanceChangedOrThatFailed(t *testing.T) {
	f := fakep11.New(3)
	e := start(t, f, 3, Options{})
	check(e)
	statusCall(e)

	e.members[1].inst.invalidate() // as the host's C_Finalize does to every member
	h := headStarted(t, f, 3, []int32{1, 0, 1})
	before := calls(f, 3)
	v := answer(e, h)
	headEnd(h)
	assert.Equal(t, []Status{StatusOK, StatusOK, StatusOK}, statuses(v))
	assert.Equal(t, []int32{0, 1, 0}, added(calls(f, 3), before), "the check asks the changed member itself")

	f.Update(12, func(s *fakep11.Script) { s.RV = ckrDeviceError })
	assert.Equal(t, []Status{StatusOK, StatusOK, ckrDeviceError}, statuses(statusCall(e)))
	headEnd(headStarted(t, f, 3, []int32{1, 1, 0}))
}

// memberOnSocket is an engine over two members whose member 0 has a unix
// endpoint; the test holds the vendor's connection to it and the server's
// end, which hangs up when closed.
func memberOnSocket(t *testing.T) (*fakep11.Module, *Engine, net.Conn) {
	f := fakep11.New(2)
	path := filepath.Join(t.TempDir(), "m0.sock")
	srv := serve(t, "unix", path)
	conn, err := net.Dial("unix", path) // the vendor's connection to member 0
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	peer := <-srv.conns
	g := f.Group("g", 4242, 2)
	g.Members[0].Endpoint = &conf.Endpoint{Network: "unix", Address: path}
	e := newEngine(t, []conf.Group{g}, Options{}) // stage 2 is the engine's own
	e.Start()
	t.Cleanup(e.Close)
	check(e)
	assert.Equal(t, []Status{StatusOK, StatusOK}, statuses(statusCall(e)))
	return f, e, peer
}

func TestHeadStartSkipsAConnectionThatHungUp(t *testing.T) {
	f, e, peer := memberOnSocket(t)
	headEnd(headStarted(t, f, 2, []int32{1, 1}))
	statusCall(e)
	require.NoError(t, peer.Close()) // member 0's server hangs up
	h := headStarted(t, f, 2, []int32{0, 1})
	assert.Equal(t, []Status{StatusSocketDown, StatusOK}, statuses(answer(e, h)), "and stage 2 reports it")
	headEnd(h)
}

func TestHeadStartSkipsAMemberStage2FoundDownSince(t *testing.T) {
	f, e, peer := memberOnSocket(t) // armed for headSlot
	require.NoError(t, peer.Close())
	h := headStart(headSlot + 1) // another slot of the group: no plan, stage 2 forgets the descriptor
	_, v, err := e.Answer(headSlot+1, h, time.Now(), nil)
	headEnd(h)
	require.NoError(t, err)
	assert.Equal(t, []Status{StatusSocketDown, StatusOK}, statuses(v))
	headEnd(headStarted(t, f, 2, []int32{0, 1})) // still armed for headSlot, but no healthy descriptor
}

func TestHeadEndWaitsForTheRoundsNobodyAskedFor(t *testing.T) {
	f := fakep11.New(2)
	e := start(t, f, 2, Options{})
	check(e)
	statusCall(e)
	f.Update(11, func(s *fakep11.Script) { s.Latency = 200 * time.Millisecond })

	t0 := time.Now()
	headEnd(headStart(headSlot)) // as after a call Go answered without asking the lanes
	took := time.Since(t0)
	assert.GreaterOrEqual(t, took, 150*time.Millisecond,
		"the status call does not return while a round it started is in flight (the host may exit or finalize next)")
	assert.Less(t, took, e.Timeout(), "and waits no longer than the round")
}
