package probe

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/internal/fakep11"
	"github.com/libhaext/libhaext/pkg/conf"
)

// Issue 17, item 1: a member stops answering before anyone called it, and
// the host asks about a slot nobody has. In p11-kit's proxy C_GetSlotList
// calls every member while holding a lock every other call takes, so a slot
// list then stalls every call of the process. The fake models it: its slot
// list takes the proxy lock and hangs (the stopped member), and every
// C_GetSessionInfo takes the lock too.
func TestUnknownSlotListsNoSlots(t *testing.T) {
	const timeout = 500 * time.Millisecond
	f := fakep11.New(3)
	f.SerializeSlotList()
	e := start(t, f, 3, Options{Timeout: timeout})
	v, _ := check(e)
	require.Equal(t, repeat(StatusOK, 3), statuses(v))
	lists, asked := f.SlotLists.Load(), f.NoSlotInfos.Load()
	release := make(chan struct{})
	defer close(release)
	f.HangSlotList(release)
	time.Sleep(1100 * time.Millisecond) // long after Start's slot list

	for i := 0; i < 3; i++ {
		t0 := time.Now()
		_, err := e.GroupForSlot(999999, t0.Add(timeout))
		assert.ErrorIs(t, err, ErrUnknownSlot, "call %d", i+1)
		assert.Less(t, time.Since(t0), 100*time.Millisecond, "answered by the slot itself")
		v, took := check(e)
		assert.Equal(t, repeat(StatusOK, 3), statuses(v), "after unknown slot %d", i+1)
		assert.Less(t, took, 100*time.Millisecond)
	}
	assert.Equal(t, lists, f.SlotLists.Load(), "an unknown slot never lists the slots")
	assert.Equal(t, asked+3, f.NoSlotInfos.Load(), "one C_GetTokenInfo on the slot per call")
}

// A slot whose C_GetTokenInfo hangs is asked once: callers meanwhile wait
// for that query until their deadline, and once it is older than
// statusTimeout not at all. Its answer is recorded.
func TestUnknownSlotQueryAtMostOnceInFlight(t *testing.T) {
	const timeout = 400 * time.Millisecond
	f := fakep11.New(2)
	e := start(t, f, 2, Options{Timeout: timeout})
	check(e)
	release := make(chan struct{})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	virtual := &fakep11.Token{Script: fakep11.Script{Serial: "4242", Label: "virtual", TokHang: release}}
	f.Add(70, virtual) // the group's own serial: a virtual HA slot
	lists := f.SlotLists.Load()

	t0 := time.Now()
	_, err := e.GroupForSlot(70, t0.Add(150*time.Millisecond))
	took := time.Since(t0)
	assert.ErrorIs(t, err, ErrNotReady)
	assert.ErrorIs(t, err, errQueryLate)
	assert.GreaterOrEqual(t, took, 140*time.Millisecond, "waited for the query until the deadline")
	assert.Less(t, took, 300*time.Millisecond)
	_, err = e.GroupForSlot(70, time.Now().Add(150*time.Millisecond))
	assert.ErrorIs(t, err, errQueryLate, "joined the query in flight")

	time.Sleep(timeout) // the query is now older than statusTimeout
	for i := 0; i < 5; i++ {
		t0 = time.Now()
		_, err = e.GroupForSlot(70, t0.Add(timeout))
		assert.ErrorIs(t, err, errQueryStuck)
		assert.Less(t, time.Since(t0), 50*time.Millisecond, "a stuck query is not waited for")
	}
	assert.Equal(t, int32(1), virtual.TokInfos.Load(), "one C_GetTokenInfo on the slot, never a second")
	assert.Equal(t, int32(1), virtual.MaxTokInflight.Load())

	close(release)
	eventually(t, time.Second, func() bool {
		g, err := e.GroupForSlot(70, time.Now().Add(timeout))
		return err == nil && g == 0
	}, "the answer names the group")
	calls := virtual.TokInfos.Load()
	g, err := e.GroupForSlot(70, time.Now().Add(timeout))
	require.NoError(t, err)
	assert.Equal(t, 0, g)
	assert.Equal(t, calls, virtual.TokInfos.Load(), "recorded in the slot map: not asked again")
	assert.Equal(t, lists, f.SlotLists.Load(), "no C_GetSlotList")
}

// A host asking about many distinct slots whose queries hang pins at most
// maxAsking threads; past that a new slot is not ready at once, while a
// slot with a query in flight is still joined and known slots still
// resolve.
func TestUnknownSlotQueriesAreCapped(t *testing.T) {
	f := fakep11.New(2)
	e := start(t, f, 2, Options{Timeout: 2 * time.Second})
	check(e)
	release := make(chan struct{})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	const n = maxAsking + 2
	toks := make([]*fakep11.Token, n)
	for i := range toks {
		toks[i] = &fakep11.Token{Script: fakep11.Script{Serial: "77770" + string(rune('a'+i)), TokHang: release}}
		f.Add(uint(100+i), toks[i])
	}
	for i := 0; i < maxAsking; i++ {
		_, err := e.GroupForSlot(uint(100+i), time.Now().Add(20*time.Millisecond))
		assert.ErrorIs(t, err, errQueryLate, "slot %d", 100+i)
	}
	for i := maxAsking; i < n; i++ {
		t0 := time.Now()
		_, err := e.GroupForSlot(uint(100+i), t0.Add(time.Second))
		assert.ErrorIs(t, err, ErrNotReady, "slot %d", 100+i)
		assert.ErrorIs(t, err, errAskingFull, "slot %d", 100+i)
		assert.Less(t, time.Since(t0), 50*time.Millisecond, "refused at once")
		assert.Equal(t, int32(0), toks[i].TokInfos.Load(), "slot %d not asked", 100+i)
	}
	_, err := e.GroupForSlot(100, time.Now().Add(20*time.Millisecond))
	assert.ErrorIs(t, err, errQueryLate, "a slot with a query in flight is joined, not refused")
	g, err := e.GroupForSlot(11, time.Now().Add(time.Second))
	require.NoError(t, err, "a known slot needs no query")
	assert.Equal(t, 0, g)
	for i := 0; i < maxAsking; i++ {
		assert.Equal(t, int32(1), toks[i].TokInfos.Load(), "slot %d asked once", 100+i)
	}

	close(release)
	eventually(t, time.Second, func() bool {
		_, err := e.GroupForSlot(uint(100+n-1), time.Now().Add(time.Second))
		return errors.Is(err, ErrUnknownSlot)
	}, "once the queries answered, a new slot is asked again (its token is no group's)")
}

// Recovery lists the slots to find a member that moved, but not while a
// member's call is stuck: the list would wait for the stuck member, and in
// p11-kit's proxy every other call behind it.
func TestRecoveryListsNoSlotsWhileAMemberIsStuck(t *testing.T) {
	const timeout = 300 * time.Millisecond
	f := fakep11.New(3)
	e := start(t, f, 3, Options{Timeout: timeout, RecoveryInterval: 100 * time.Millisecond})
	check(e)
	release := make(chan struct{})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	f.Update(12, func(s *fakep11.Script) { s.Hang = release })
	check(e) // member 2 hangs
	eventually(t, 2*time.Second, func() bool { return e.Stuck() == 1 }, "member 2's call is stuck")
	lists := f.SlotLists.Load()

	// Member 0's token moves: its session is gone, recovery looks for it.
	f.Move(10, 30)
	f.CloseAll(10)
	v, _ := check(e)
	assert.Equal(t, StatusTimeout, v[2].Status)
	time.Sleep(500 * time.Millisecond) // recovery tries a few times
	v, _ = check(e)
	assert.Equal(t, StatusNoInstance, v[0].Status, "not found without a slot list")
	assert.Equal(t, StatusOK, v[1].Status)
	assert.Equal(t, lists, f.SlotLists.Load(), "no C_GetSlotList while a member's call is stuck")

	close(release)
	eventually(t, 3*time.Second, func() bool {
		v, _ := check(e)
		return v[0].Status == StatusOK && v[0].Slot == 30 && v[2].Status == StatusOK
	}, "found at its new slot once no call is stuck")
	assert.Greater(t, f.SlotLists.Load(), lists)
}

// A status call about a member's slot right after Start asks the slot
// itself while the first slot list is still being read: that refresh must
// wait for the status call's answer about the slot instead of skipping the
// slot, or the member's first resolution misses it and the member is
// reported without an instance.
func TestFirstCallAsksASlotTheFirstRefreshListed(t *testing.T) {
	f := fakep11.New(3)
	release := make(chan struct{})
	f.HangSlotList(release)
	f.Update(10, func(s *fakep11.Script) { s.Latency = 300 * time.Millisecond })
	e := newEngine(t, []conf.Group{f.Group("g", 4242, 3)}, Options{Sockets: allHealthy, Timeout: 2 * time.Second})
	e.Start()
	defer e.Close()
	type answer struct {
		g   int
		err error
	}
	got := make(chan answer, 1)
	go func() {
		g, err := e.GroupForSlot(10, time.Now().Add(2*time.Second))
		got <- answer{g, err}
	}()
	eventually(t, time.Second, func() bool { return f.Token(10).TokInfos.Load() == 1 }, "the status call asks slot 10")
	close(release) // the slot list answers; slot 10's token is still on its way
	a := <-got
	require.NoError(t, a.err)
	v := e.Check(a.g, time.Now().Add(2*time.Second), nil)
	assert.Equal(t, repeat(StatusOK, 3), statuses(v))
	assert.Equal(t, int32(1), f.Token(10).TokInfos.Load(), "the refresh took the status call's answer")
}
