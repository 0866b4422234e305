package probe

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/internal/fakep11"
	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// allHealthy is a stage 2 that passes every member.
func allHealthy(_ []conf.Endpoint, healthy []bool) {
	for i := range healthy {
		healthy[i] = true
	}
}

// newEngine builds an engine over the fake (through its C function list, as
// over a vendor module) for the groups; the caller starts it.
func newEngine(tb testing.TB, groups []conf.Group, opts Options) *Engine {
	tb.Helper()
	mod, err := cryptoki.Attach(fakep11.List())
	require.NoError(tb, err)
	e, err := New(mod, groups, opts)
	require.NoError(tb, err)
	return e
}

// start builds a started engine over the fake's first n tokens as one group.
func start(t *testing.T, f *fakep11.Module, n int, opts Options) *Engine {
	t.Helper()
	if opts.Sockets == nil {
		opts.Sockets = allHealthy
	}
	e := newEngine(t, []conf.Group{f.Group("g", 4242, n)}, opts)
	e.Start()
	t.Cleanup(e.Close)
	return e
}

func check(e *Engine) ([]Verdict, time.Duration) {
	t0 := time.Now()
	v := e.Check(0, t0.Add(e.Timeout()), nil)
	return v, time.Since(t0)
}

func statuses(vs []Verdict) []Status {
	out := make([]Status, len(vs))
	for i, v := range vs {
		out[i] = v.Status
	}
	return out
}

func repeat(s Status, n int) []Status {
	out := make([]Status, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// eventually polls cond every 10 ms for up to d.
func eventually(t *testing.T, d time.Duration, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, d, 10*time.Millisecond, msg)
}

func TestHealthyGroupAllOK(t *testing.T) {
	f := fakep11.New(3)
	e := start(t, f, 3, Options{Timeout: 3 * time.Second})
	v, took := check(e)
	assert.Equal(t, repeat(StatusOK, 3), statuses(v))
	assert.Less(t, took, time.Second, "a healthy group answers far below statusTimeout")
	for i, vv := range v {
		assert.True(t, vv.HasSlot)
		assert.Equal(t, uint(10+i), vv.Slot)
		assert.Equal(t, f.Token(uint(10+i)).Label, vv.Label)
	}
	assert.Equal(t, map[uint]int{10: 1, 11: 1, 12: 1}, f.OpenSessions(), "one monitor session per member")
}

func TestMembersAreCheckedInParallel(t *testing.T) {
	f := fakep11.New(8)
	e := start(t, f, 8, Options{Timeout: 5 * time.Second})
	check(e) // first call: resolution and sessions
	for slot := uint(10); slot < 18; slot++ {
		f.Update(slot, func(s *fakep11.Script) { s.Latency = 200 * time.Millisecond })
	}
	v, took := check(e)
	assert.Equal(t, repeat(StatusOK, 8), statuses(v))
	assert.Less(t, took, 800*time.Millisecond, "8 members of 200 ms each take about one round trip, not eight")
	assert.GreaterOrEqual(t, took, 190*time.Millisecond)
}

func TestMemberErrorIsReportedAsItsCKRV(t *testing.T) {
	f := fakep11.New(3)
	e := start(t, f, 3, Options{})
	f.Update(11, func(s *fakep11.Script) { s.RV = ckrDeviceError })
	v, _ := check(e)
	assert.Equal(t, []Status{StatusOK, ckrDeviceError, StatusOK}, statuses(v))
	assert.Equal(t, "CKR_DEVICE_ERROR", v[1].Status.String())
}

func TestSocketDownSkipsTheLightweightCall(t *testing.T) {
	f := fakep11.New(3)
	g := f.Group("g", 1, 3)
	g.Members[1].Endpoint = &conf.Endpoint{Network: "unix", Address: "/run/m1.sock"}
	var seen []conf.Endpoint
	var mu sync.Mutex
	e := newEngine(t, []conf.Group{g}, Options{Sockets: func(eps []conf.Endpoint, healthy []bool) {
		mu.Lock()
		seen = append([]conf.Endpoint(nil), eps...)
		mu.Unlock()
		healthy[0] = false
	}})
	e.Start()
	defer e.Close()
	before := f.Token(11).Infos.Load()
	v, took := check(e)
	assert.Equal(t, []Status{StatusOK, StatusSocketDown, StatusOK}, statuses(v))
	assert.Less(t, took, time.Second)
	assert.Equal(t, before, f.Token(11).Infos.Load(), "nothing is sent to a member whose socket is down")
	mu.Lock()
	assert.Equal(t, []conf.Endpoint{*g.Members[1].Endpoint}, seen, "only members with an endpoint are scanned")
	mu.Unlock()
}

func TestMissingAndAbsentMembersHaveNoInstance(t *testing.T) {
	f := fakep11.New(2)
	g := f.Group("g", 1, 2)
	g.Members = append(g.Members, conf.Member{Serial: 0xdead, SerialText: "dead"})
	f.Update(11, func(s *fakep11.Script) { s.Absent = true })
	e := newEngine(t, []conf.Group{g}, Options{Timeout: 2 * time.Second})
	e.Start()
	defer e.Close()
	v, took := check(e)
	assert.Equal(t, []Status{StatusOK, StatusNoInstance, StatusNoInstance}, statuses(v))
	assert.Less(t, took, 2*time.Second)
	assert.False(t, v[2].HasSlot)
}

func TestHungMember(t *testing.T) {
	const timeout = time.Second
	f := fakep11.New(3)
	e := start(t, f, 3, Options{Timeout: timeout})
	check(e)
	asked := f.Token(11).Infos.Load()
	release := make(chan struct{})
	f.Update(11, func(s *fakep11.Script) { s.Hang = release })
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	// The first call waits for the hung member until its deadline.
	v, took := check(e)
	assert.Equal(t, []Status{StatusOK, StatusTimeout, StatusOK}, statuses(v))
	assert.GreaterOrEqual(t, took, timeout-10*time.Millisecond)
	assert.Less(t, took, timeout+500*time.Millisecond, "reported at statusTimeout")

	// The stuck call is now older than statusTimeout: later calls do not
	// wait for it, and do not ask the member again.
	for i := 0; i < 20; i++ {
		v, took = check(e)
		assert.Equal(t, []Status{StatusOK, StatusTimeout, StatusOK}, statuses(v))
		assert.Less(t, took, 200*time.Millisecond, "a member stuck past statusTimeout is reported at once")
	}
	assert.Equal(t, asked+1, f.Token(11).Infos.Load(), "one call in flight, never a second")

	close(release)
	eventually(t, 2*time.Second, func() bool {
		v, _ := check(e)
		return v[1].Status == StatusOK
	}, "member is OK again once it answers")
	assert.Equal(t, int32(1), f.Token(11).MaxInflight.Load())
}

func TestCallerJoinsYoungStuckCallUntilItsOwnDeadline(t *testing.T) {
	const timeout = time.Second
	f := fakep11.New(1)
	e := start(t, f, 1, Options{Timeout: timeout})
	check(e)
	asked := f.Token(10).Infos.Load()
	release := make(chan struct{})
	f.Update(10, func(s *fakep11.Script) { s.Hang = release })
	first := make(chan time.Duration)
	go func() {
		_, took := check(e)
		first <- took
	}()
	time.Sleep(300 * time.Millisecond)
	// The stuck call is 300 ms old: this caller waits, sharing it.
	t0 := time.Now()
	v := e.Check(0, t0.Add(400*time.Millisecond), nil)
	took := time.Since(t0)
	assert.Equal(t, StatusTimeout, v[0].Status)
	assert.GreaterOrEqual(t, took, 390*time.Millisecond, "waits for the young call up to its own deadline")
	assert.Less(t, took, 700*time.Millisecond)
	close(release)
	assert.Less(t, <-first, timeout+300*time.Millisecond)
	assert.Equal(t, asked+1, f.Token(10).Infos.Load(), "both callers shared one call")
}

// A caller that joins a call which turns stuck before the caller's own
// deadline stops waiting when it does: the member is then reported
// StatusTimeout, as it would be to a caller arriving a moment later. (The
// first caller's lane call starts after stages 1 and 2, so the next caller
// can arrive just before the call is statusTimeout old.)
func TestCallerStopsWaitingWhenTheSharedCallTurnsStuck(t *testing.T) {
	const timeout = time.Second
	f := fakep11.New(1)
	e := start(t, f, 1, Options{Timeout: timeout})
	check(e)
	release := make(chan struct{})
	defer close(release)
	f.Update(10, func(s *fakep11.Script) { s.Hang = release })
	go check(e)
	time.Sleep(800 * time.Millisecond)
	// The call is 800 ms old: it is stuck 200 ms from now, long before
	// this caller's own deadline.
	v, took := check(e)
	assert.Equal(t, StatusTimeout, v[0].Status)
	assert.GreaterOrEqual(t, took, 150*time.Millisecond, "shares the young call while it is young")
	assert.Less(t, took, 500*time.Millisecond, "and stops waiting once it is statusTimeout old")
}

func TestManyCallersDuringAHangDoNotPileUp(t *testing.T) {
	f := fakep11.New(4)
	e := start(t, f, 4, Options{Timeout: time.Second})
	check(e)
	release := make(chan struct{})
	f.Update(12, func(s *fakep11.Script) { s.Hang = release })
	goroutines := runtime.NumGoroutine()

	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	for c := 0; c < 32; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				v, took := check(e)
				ok := len(v) == 4 && v[0].Status == StatusOK && v[2].Status == StatusTimeout &&
					took < e.Timeout()+500*time.Millisecond
				if !ok {
					mu.Lock()
					bad++
					t.Logf("bad report after %v: %x", took, statuses(v))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, bad, "every report during the hang is well-formed and on time")
	assert.Equal(t, int32(1), f.Token(12).MaxInflight.Load(), "never more than one call in flight per member")
	assert.LessOrEqual(t, runtime.NumGoroutine(), goroutines+2, "no goroutine pile-up")
	close(release)
}

func TestSessionLostIsRecoveredInTheBackground(t *testing.T) {
	f := fakep11.New(3)
	e := start(t, f, 3, Options{RecoveryInterval: 200 * time.Millisecond})
	check(e)
	opens := f.Opens.Load()
	f.CloseAll(11) // the host's C_CloseAllSessions

	v, _ := check(e)
	assert.Equal(t, []Status{StatusOK, ckrSessionHandleInvalid, StatusOK}, statuses(v))
	v, _ = check(e)
	assert.Equal(t, StatusNoInstance, v[1].Status, "no monitor session until recovery re-opens one")
	assert.Equal(t, opens, f.Opens.Load(), "a status call opens no session")

	eventually(t, 2*time.Second, func() bool {
		v, _ := check(e)
		return v[1].Status == StatusOK
	}, "recovery re-opens the monitor session")
	assert.Equal(t, opens+1, f.Opens.Load(), "exactly one session re-opened")
	assert.Equal(t, map[uint]int{10: 1, 11: 1, 12: 1}, f.OpenSessions(), "nothing leaked")
}

func TestRecoveryIsRateLimited(t *testing.T) {
	f := fakep11.New(1)
	f.Update(10, func(s *fakep11.Script) { s.Absent = true })
	e := start(t, f, 1, Options{RecoveryInterval: 300 * time.Millisecond})
	check(e)
	time.Sleep(1000 * time.Millisecond)
	v, _ := check(e)
	assert.Equal(t, StatusNoInstance, v[0].Status)
	f.Update(10, func(s *fakep11.Script) { s.Absent = false })
	eventually(t, 2*time.Second, func() bool {
		v, _ := check(e)
		return v[0].Status == StatusOK
	}, "the token came back")
	assert.Equal(t, int32(1), f.Opens.Load())
}

func TestReinitializeAfterTheHostFinalized(t *testing.T) {
	f := fakep11.New(2)
	e := start(t, f, 2, Options{RecoveryInterval: 100 * time.Millisecond})
	check(e)
	f.Finalize()
	v, _ := check(e)
	assert.Equal(t, repeat(StatusNoInstance, 2), statuses(v), "a finalized module is no instance (issue 9.5)")
	eventually(t, 3*time.Second, func() bool {
		v, _ := check(e)
		return v[0].Status == StatusOK && v[1].Status == StatusOK
	}, "members come back once the module is initialized again")
	assert.GreaterOrEqual(t, f.Inits.Load(), int32(2), "initialized at start, and again")
	assert.Equal(t, map[uint]int{10: 1, 11: 1}, f.OpenSessions())
}

func TestFirstCallWaitsForResolution(t *testing.T) {
	f := fakep11.New(2)
	f.Update(11, func(s *fakep11.Script) { s.Latency = 300 * time.Millisecond })
	e := start(t, f, 2, Options{Timeout: 3 * time.Second})
	v, took := check(e)
	assert.Equal(t, repeat(StatusOK, 2), statuses(v), "a slow member is resolved, not reported absent")
	assert.Less(t, took, 2*time.Second)
}

func TestFirstCallTimesOutOnAHungResolution(t *testing.T) {
	f := fakep11.New(2)
	release := make(chan struct{})
	defer close(release)
	f.Update(11, func(s *fakep11.Script) { s.TokHang = release })
	e := start(t, f, 2, Options{Timeout: time.Second})
	v, took := check(e)
	assert.Equal(t, StatusOK, v[0].Status, "a healthy member is not held up by a hung one")
	// The hung token never answered: whether its resolution gave up just
	// before the deadline or not, the member has no verdict.
	assert.Contains(t, []Status{StatusTimeout, StatusNoInstance}, v[1].Status)
	assert.Less(t, took, 1500*time.Millisecond)
}

func TestGroupForSlot(t *testing.T) {
	f := fakep11.New(4)
	vslot := &fakep11.Token{Script: fakep11.Script{Serial: "777", Label: "virtual"}}
	f.Add(50, vslot) // a vendor's virtual HA slot: token serial = group serial
	g1 := f.Group("one", 777, 2)
	g2 := f.Group("two", 888, 4)
	e := newEngine(t, []conf.Group{g1, g2}, Options{})
	e.Start()
	defer e.Close()
	deadline := time.Now().Add(time.Second)
	for slot, want := range map[uint]int{10: 0, 11: 0, 12: 1, 13: 1, 50: 0} {
		g, err := e.GroupForSlot(slot, deadline)
		require.NoError(t, err, "slot %d", slot)
		assert.Equal(t, want, g, "slot %d: first group in file order", slot)
	}
	_, err := e.GroupForSlot(99, deadline)
	assert.ErrorIs(t, err, ErrUnknownSlot)

	// A token that appears later is found by asking its slot, without
	// listing the slots.
	lists := f.SlotLists.Load()
	f.Add(60, &fakep11.Token{Script: fakep11.Script{Serial: "888"}})
	g, err := e.GroupForSlot(60, time.Now().Add(time.Second))
	require.NoError(t, err)
	assert.Equal(t, 1, g)
	assert.Equal(t, lists, f.SlotLists.Load(), "no C_GetSlotList")
}

func TestGroupForSlotNeverBlocksPastTheDeadline(t *testing.T) {
	f := fakep11.New(2)
	release := make(chan struct{})
	f.HangSlotList(release)
	f.Update(10, func(s *fakep11.Script) { s.TokHang = release })
	defer close(release)
	e := newEngine(t, []conf.Group{f.Group("g", 1, 2)}, Options{})
	e.Start()
	defer e.Close()
	t0 := time.Now()
	_, err := e.GroupForSlot(10, t0.Add(300*time.Millisecond))
	assert.ErrorIs(t, err, ErrNotReady)
	assert.Less(t, time.Since(t0), time.Second)
	// A slot that answers is resolved although the slot list hangs.
	g, err := e.GroupForSlot(11, time.Now().Add(300*time.Millisecond))
	require.NoError(t, err)
	assert.Equal(t, 0, g)
}

func TestMembersAreFollowedBySerialAcrossRenumbering(t *testing.T) {
	f := fakep11.New(2)
	e := start(t, f, 2, Options{RecoveryInterval: 100 * time.Millisecond})
	check(e)
	// The token of member 1 moves from slot 11 to slot 31.
	f.Move(11, 31)
	f.CloseAll(11)
	eventually(t, 3*time.Second, func() bool {
		v, _ := check(e)
		return v[1].Status == StatusOK && v[1].Slot == 31
	}, "member found again at its new slot")
}

func TestTransitionsAreObserved(t *testing.T) {
	f := fakep11.New(2)
	var mu sync.Mutex
	var seen []Transition
	e := start(t, f, 2, Options{OnTransition: func(tr Transition) {
		mu.Lock()
		seen = append(seen, tr)
		mu.Unlock()
	}})
	check(e)
	check(e)
	f.Update(11, func(s *fakep11.Script) { s.RV = ckrDeviceError })
	check(e)
	check(e)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 3, "two first verdicts and one change")
	assert.True(t, seen[0].First && seen[1].First)
	last := seen[2]
	assert.False(t, last.First)
	assert.Equal(t, "g", last.Group)
	assert.Equal(t, StatusOK, last.Old)
	assert.Equal(t, Status(ckrDeviceError), last.New)
}

func TestCloseClosesMonitorSessions(t *testing.T) {
	f := fakep11.New(3)
	e := newEngine(t, []conf.Group{f.Group("g", 1, 3)}, Options{})
	e.Start()
	check(e)
	e.Close()
	assert.Empty(t, f.OpenSessions())
	assert.Equal(t, int32(3), f.Closes.Load())
}

func TestStatusVocabulary(t *testing.T) {
	assert.Equal(t, "CKR_HA_TIMEOUT", StatusTimeout.String())
	assert.Equal(t, Status(0xC8410001), StatusNoInstance)
	assert.Equal(t, Status(0xC8410002), StatusSocketDown)
	assert.Equal(t, Status(0xC8410003), StatusTimeout)
	assert.Equal(t, "CKR_0x80001234", Status(0x80001234).String())
	assert.Equal(t, "CKR_DEVICE_ERROR", Status(ckrDeviceError).String())
	assert.Equal(t, "alive", StatusOK.Reason())
	assert.Equal(t, "socket down", StatusSocketDown.Reason())
	assert.Equal(t, "no instance", StatusNoInstance.Reason())
	assert.Equal(t, "CKR_DEVICE_ERROR", Status(ckrDeviceError).Reason())
	assert.True(t, StatusOK.Alive())
	assert.False(t, StatusTimeout.Alive())
}

func TestLaunchRaisesProcsUnlessTheOperatorChose(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	f := fakep11.New(3)
	groups := []conf.Group{f.Group("g", 1, 3)}
	launch := func(getenv func(string) string) *Engine {
		mod, err := cryptoki.Attach(fakep11.List())
		require.NoError(t, err)
		e, err := Launch(mod, groups, Options{Sockets: allHealthy}, getenv)
		require.NoError(t, err)
		t.Cleanup(e.Close)
		return e
	}
	runtime.GOMAXPROCS(1)
	e := launch(func(string) string { return "" })
	assert.Equal(t, e.WantProcs(), runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(e.WantProcs() + 5)
	launch(func(string) string { return "" })
	assert.Equal(t, e.WantProcs()+5, runtime.GOMAXPROCS(0), "never lowered")
	runtime.GOMAXPROCS(1)
	launch(func(k string) string {
		if k == "GOMAXPROCS" {
			return "1"
		}
		return ""
	})
	assert.Equal(t, 1, runtime.GOMAXPROCS(0), "the operator's choice stands")
}

// A slot-map miss during a hang must not make healthy members time out: in
// p11-kit's proxy a C_GetSlotList waits for the hung member, and every other
// call waits behind it (issue 9, item 4).
func TestUnknownSlotDuringAHangLeavesHealthyMembersAlone(t *testing.T) {
	const timeout = 500 * time.Millisecond
	f := fakep11.New(3)
	f.SerializeSlotList()
	e := start(t, f, 3, Options{Timeout: timeout})
	check(e)
	release := make(chan struct{})
	defer close(release)
	f.Update(11, func(s *fakep11.Script) { s.Hang = release })
	check(e) // member 1 hangs; its call is now stuck
	for i := 0; i < 2; i++ {
		_, err := e.GroupForSlot(99, time.Now().Add(timeout))
		assert.ErrorIs(t, err, ErrUnknownSlot)
		v, _ := check(e)
		assert.Equal(t, []Status{StatusOK, StatusTimeout, StatusOK}, statuses(v), "after unknown slot %d", i+1)
	}
}

// Between the host's C_Finalize and its C_Initialize a member's slot still
// names its group, whose members are CKR_HA_NO_INSTANCE; a slot never seen
// is ErrNotInitialized, never ErrUnknownSlot (issue 9, item 5).
func TestFinalizeWindow(t *testing.T) {
	f := fakep11.New(2)
	f.HostInitialize()
	e := start(t, f, 2, Options{RecoveryInterval: 50 * time.Millisecond})
	check(e)
	f.Finalize()
	for i := 0; i < 5; i++ {
		g, err := e.GroupForSlot(11, time.Now().Add(time.Second))
		require.NoError(t, err, "a member's slot still names its group")
		v := e.Check(g, time.Now().Add(time.Second), nil)
		assert.Equal(t, repeat(StatusNoInstance, 2), statuses(v))
		time.Sleep(100 * time.Millisecond) // recovery tries, and must not forget the slots
	}
	_, err := e.GroupForSlot(77, time.Now().Add(time.Second))
	assert.ErrorIs(t, err, ErrNotInitialized)

	f.HostInitialize() // the host's C_Initialize ends the window
	eventually(t, 2*time.Second, func() bool {
		v, _ := check(e)
		return v[0].Status == StatusOK && v[1].Status == StatusOK
	}, "members come back once the host initializes the module again")
}

// With NoSession the engine opens no session at all: stage 3 is
// C_GetTokenInfo on the member's slot, with the same timing rules.
func TestNoSessionChecksTokenInfo(t *testing.T) {
	f := fakep11.New(3)
	e := start(t, f, 3, Options{NoSession: true, Timeout: 500 * time.Millisecond, RecoveryInterval: 100 * time.Millisecond})
	v, _ := check(e)
	assert.Equal(t, repeat(StatusOK, 3), statuses(v))
	assert.Equal(t, int32(0), f.Opens.Load(), "no session opened")

	f.Update(11, func(s *fakep11.Script) { s.Absent = true })
	v, _ = check(e)
	assert.Equal(t, []Status{StatusOK, ckrTokenNotPresent, StatusOK}, statuses(v))
	f.Update(11, func(s *fakep11.Script) { s.Absent = false })
	eventually(t, 2*time.Second, func() bool {
		v, _ := check(e)
		return v[1].Status == StatusOK
	}, "the member is resolved again once its token is back")

	release := make(chan struct{})
	defer close(release)
	f.Update(12, func(s *fakep11.Script) { s.TokHang = release })
	v, took := check(e)
	assert.Equal(t, []Status{StatusOK, StatusOK, StatusTimeout}, statuses(v))
	assert.Less(t, took, time.Second)
	v, took = check(e)
	assert.Equal(t, StatusTimeout, v[2].Status, "a stuck member is not asked again")
	assert.Less(t, took, 200*time.Millisecond)
	assert.Equal(t, int32(0), f.Opens.Load(), "still no session")
}

func TestCheckAfterCloseTouchesNoVendor(t *testing.T) {
	f := fakep11.New(2)
	e := start(t, f, 2, Options{})
	check(e)
	infos := f.Token(10).Infos.Load()
	e.Close()
	assert.True(t, e.Quiet())
	v, _ := check(e)
	assert.Equal(t, repeat(StatusNoInstance, 2), statuses(v))
	assert.Equal(t, infos, f.Token(10).Infos.Load(), "no call after Close")
}

// A front module tells the engine what the host's own calls found.
func TestHostEvidence(t *testing.T) {
	f := fakep11.New(3)
	f.HostInitialize() // the host's module, as behind a front
	e := start(t, f, 3, Options{RecoveryInterval: 100 * time.Millisecond})
	check(e)
	infos := f.Token(11).Infos.Load()
	e.HostError(11, ckrDeviceError)
	e.HostError(99, ckrDeviceError) // no member there
	v, _ := check(e)
	assert.Equal(t, []Status{StatusOK, ckrDeviceError, StatusOK}, statuses(v), "reported without a probe")
	assert.Equal(t, infos, f.Token(11).Infos.Load(), "no call made to report it")
	eventually(t, 2*time.Second, func() bool {
		v, _ := check(e)
		return v[1].Status == StatusOK
	}, "recovery resolves the member again (it is healthy)")
	assert.Equal(t, map[uint]int{10: 1, 11: 1, 12: 1}, f.OpenSessions(), "the old session closed, one new")

	f.Finalize() // the host's C_Finalize, as the front reports it
	e.HostFinalized()
	v, _ = check(e)
	assert.Equal(t, repeat(StatusNoInstance, 3), statuses(v))
	opens := f.Opens.Load()
	time.Sleep(300 * time.Millisecond) // longer than RecoveryInterval: no retries while finalized
	v, _ = check(e)
	assert.Equal(t, repeat(StatusNoInstance, 3), statuses(v))
	f.Move(12, 32) // slots may move when the host initializes again
	f.HostInitialize()
	e.HostInitialized()
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, opens, f.Opens.Load(), "no vendor call between the host's C_Initialize and the next status call")
	v, _ = check(e)
	assert.Equal(t, []Status{StatusOK, StatusOK, StatusOK}, statuses(v), "the first status call after re-initialization")
	assert.Equal(t, uint(32), v[2].Slot, "resolved again by serial")

	// Right after the host initializes again, with no pause: still right.
	for i := 0; i < 20; i++ {
		f.Finalize()
		e.HostFinalized()
		f.HostInitialize()
		e.HostInitialized()
		v, _ = check(e)
		require.Equal(t, []Status{StatusOK, StatusOK, StatusOK}, statuses(v), "round %d", i)
	}
}
