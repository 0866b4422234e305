package probe

import (
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/libhaext/libhaext/internal/fakep11"
	"github.com/libhaext/libhaext/pkg/conf"
)

// The head start (lanes.h): a status call's C entry point starts the
// members that answered last time, before Go runs stages 1 and 2, and the
// check takes those rounds instead of making calls of its own.

const headSlot = 7 // the slot the host asks about (any key)

// statusCall is what capi.c does for CA_GetCurrentHAState(headSlot).
func statusCall(e *Engine) []Verdict {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	headStart(headSlot)
	defer headEnd()
	return e.CheckSlot(headSlot, 0, time.Now().Add(e.Timeout()), nil)
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

// headStarted runs the head start alone, on a locked thread, and returns
// the calls it made once they have settled; the caller ends it.
func headStarted(t *testing.T, f *fakep11.Module, n int, want []int32) {
	t.Helper()
	before := calls(f, n)
	headStart(headSlot)
	require.Eventually(t, func() bool { return assert.ObjectsAreEqual(want, added(calls(f, n), before)) },
		2*time.Second, time.Millisecond, "calls made by the head start alone")
	time.Sleep(30 * time.Millisecond)
	assert.Equal(t, want, added(calls(f, n), before), "and no more")
}

func TestHeadStartCallsTheMembersBeforeGoRunsAndTheCheckTakesThoseRounds(t *testing.T) {
	f := fakep11.New(3)
	e := start(t, f, 3, Options{})
	check(e) // the first resolutions have ended
	assert.Equal(t, []Status{StatusOK, StatusOK, StatusOK}, statuses(statusCall(e)), "arms every member")

	runtime.LockOSThread()
	before := calls(f, 3)
	headStarted(t, f, 3, []int32{1, 1, 1})
	v := e.CheckSlot(headSlot, 0, time.Now().Add(e.Timeout()), nil)
	headEnd()
	runtime.UnlockOSThread()
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
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := calls(f, 2)
	headStart(headSlot + 1)
	time.Sleep(30 * time.Millisecond)
	headEnd()
	assert.Equal(t, []int32{0, 0}, added(calls(f, 2), before), "no check about that slot yet: nothing to start")

	before = calls(f, 2)
	check(e) // a check that serves no status call (hastatus) leaves the plan alone
	headStarted(t, f, 2, []int32{1, 1})
	headEnd()
}

func TestHeadStartSkipsAMemberWhoseInstanceChangedOrThatFailed(t *testing.T) {
	f := fakep11.New(3)
	e := start(t, f, 3, Options{})
	check(e)
	statusCall(e)

	e.members[1].inst.invalidate() // as the host's C_Finalize does to every member
	runtime.LockOSThread()
	headStarted(t, f, 3, []int32{1, 0, 1})
	before := calls(f, 3)
	v := e.CheckSlot(headSlot, 0, time.Now().Add(e.Timeout()), nil)
	headEnd()
	runtime.UnlockOSThread()
	assert.Equal(t, []Status{StatusOK, StatusOK, StatusOK}, statuses(v))
	assert.Equal(t, []int32{0, 1, 0}, added(calls(f, 3), before), "the check asks the changed member itself")

	f.Update(12, func(s *fakep11.Script) { s.RV = ckrDeviceError })
	assert.Equal(t, []Status{StatusOK, StatusOK, ckrDeviceError}, statuses(statusCall(e)))
	runtime.LockOSThread()
	headStarted(t, f, 3, []int32{1, 1, 0})
	headEnd()
	runtime.UnlockOSThread()
}

func TestHeadStartSkipsAConnectionThatHungUp(t *testing.T) {
	f := fakep11.New(2)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(pair[0])
	g := f.Group("g", 4242, 2)
	g.Members[0].Endpoint = &conf.Endpoint{Network: "unix", Address: "/run/m0.sock"}
	e := newEngine(t, []conf.Group{g}, Options{Sockets: func(_ []conf.Endpoint, healthy []bool, fds []int) {
		healthy[0], fds[0] = true, pair[0] // stage 2 stays healthy: only the head start's poll sees the hang-up
	}})
	e.Start()
	defer e.Close()
	check(e)
	statusCall(e)

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	headStarted(t, f, 2, []int32{1, 1})
	headEnd()
	statusCall(e)
	require.NoError(t, unix.Close(pair[1]))
	headStarted(t, f, 2, []int32{0, 1})
	headEnd()
}

func TestHeadEndWaitsForTheRoundsNobodyAskedFor(t *testing.T) {
	f := fakep11.New(2)
	e := start(t, f, 2, Options{})
	check(e)
	statusCall(e)
	f.Update(11, func(s *fakep11.Script) { s.Latency = 200 * time.Millisecond })

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0 := time.Now()
	headStart(headSlot)
	headEnd() // as after a call Go answered without asking the lanes
	took := time.Since(t0)
	assert.GreaterOrEqual(t, took, 150*time.Millisecond,
		"the status call does not return while a round it started is in flight (the host may exit or finalize next)")
	assert.Less(t, took, e.Timeout(), "and waits no longer than the round")
}
