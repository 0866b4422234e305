package notify

import (
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libhaext/libhaext/pkg/probe"
)

// recorder collects what a Notifier delivers.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) deliver(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

func (r *recorder) got() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Change(nil), r.changes...)
}

func report(statuses ...probe.Status) []probe.Verdict {
	out := make([]probe.Verdict, len(statuses))
	for i, s := range statuses {
		out[i] = probe.Verdict{Serial: uint64(100 + i), SerialText: string(rune('a' + i)), Status: s}
	}
	return out
}

const down = probe.StatusTimeout

func TestBaselineThenChanges(t *testing.T) {
	var r recorder
	n := New(r.deliver, func(uint) {})
	defer n.Close()
	t0 := time.Now()
	n.Observe(t0, 7, report(probe.StatusOK, down)) // no watch: nothing
	n.Set(7, 1, 0, nil)
	if !n.Active() {
		t.Fatal("Active is false after Set")
	}
	n.Observe(t0.Add(1), 7, report(probe.StatusOK, down)) // the baseline
	if got := r.got(); len(got) != 0 {
		t.Fatalf("the first report after registration delivered %v", got)
	}
	n.Observe(t0.Add(2), 7, report(down, down))
	n.Observe(t0.Add(3), 7, report(down, down)) // no change
	n.Observe(t0.Add(4), 7, report(probe.StatusOK, probe.StatusOK))
	n.Observe(t0.Add(5), 8, report(down, down)) // another group: no watch
	want := []Change{
		{Group: 7, Serial: 100, SerialText: "a", Old: probe.StatusOK, New: down},
		{Group: 7, Serial: 100, SerialText: "a", Old: down, New: probe.StatusOK},
		{Group: 7, Serial: 101, SerialText: "b", Old: down, New: probe.StatusOK},
	}
	got := r.got()
	if len(got) != len(want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("change %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestOlderReportIsNotCompared(t *testing.T) {
	var r recorder
	n := New(r.deliver, func(uint) {})
	defer n.Close()
	t0 := time.Now()
	n.Set(7, 1, 0, nil)
	n.Observe(t0.Add(10), 7, report(probe.StatusOK))
	n.Observe(t0.Add(5), 7, report(down)) // started before the baseline's check
	n.Observe(t0.Add(20), 7, report(probe.StatusOK))
	if got := r.got(); len(got) != 0 {
		t.Fatalf("an older report was compared: %v", got)
	}
}

func TestReplaceKeepsBaselineClearStops(t *testing.T) {
	var r recorder
	n := New(r.deliver, func(uint) {})
	defer n.Close()
	t0 := time.Now()
	applied := 0
	n.Set(7, 1, 0, func() { applied++ })
	n.Observe(t0.Add(1), 7, report(probe.StatusOK))
	n.Set(7, 2, 0, func() { applied++ }) // replaced, through another slot of the group
	n.Observe(t0.Add(2), 7, report(down))
	if got := r.got(); len(got) != 1 || got[0].Old != probe.StatusOK || got[0].New != down {
		t.Fatalf("after replacing: %v, want one change OK -> timeout", got)
	}
	if g, ok := n.GroupOf(2); !ok || g != 7 {
		t.Errorf("GroupOf(2) = %d, %v; want 7, true", g, ok)
	}
	if _, ok := n.GroupOf(1); ok {
		t.Error("GroupOf(1) still finds the replaced registration's slot")
	}
	if !n.Clear(7, func() { applied++ }) || n.Clear(7, nil) {
		t.Error("Clear reports the wrong registrations")
	}
	if applied != 3 {
		t.Errorf("apply ran %d times, want 3", applied)
	}
	if n.Active() {
		t.Error("Active after the last Clear")
	}
	n.Observe(t0.Add(3), 7, report(probe.StatusOK))
	if got := r.got(); len(got) != 1 {
		t.Fatalf("a change was delivered after Clear: %v", got)
	}
}

func TestIntervalChecksStartAtOnceAndStop(t *testing.T) {
	var calls atomic.Int32
	var slotSeen atomic.Int32
	n := New(func(Change) {}, func(slot uint) {
		slotSeen.Store(int32(slot))
		calls.Add(1)
	})
	defer n.Close()
	n.Set(7, 3, 20*time.Millisecond, nil)
	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if c := calls.Load(); c < 3 {
		t.Fatalf("%d checks in 5 s at a 20 ms interval", c)
	}
	if s := slotSeen.Load(); s != 3 {
		t.Errorf("checked slot %d, want the registered 3", s)
	}
	n.Clear(7, nil)
	time.Sleep(30 * time.Millisecond) // a check in flight ends
	after := calls.Load()
	time.Sleep(100 * time.Millisecond)
	if c := calls.Load(); c != after {
		t.Errorf("%d checks after Clear", c-after)
	}
}

func TestNoIntervalNoChecks(t *testing.T) {
	var calls atomic.Int32
	n := New(func(Change) {}, func(uint) { calls.Add(1) })
	defer n.Close()
	n.Set(7, 3, 0, nil)
	time.Sleep(50 * time.Millisecond)
	if c := calls.Load(); c != 0 {
		t.Errorf("%d checks with interval 0", c)
	}
	// Replacing with an interval starts them; with 0 again stops them.
	n.Set(7, 3, 10*time.Millisecond, nil)
	time.Sleep(50 * time.Millisecond)
	n.Set(7, 3, 0, nil)
	time.Sleep(20 * time.Millisecond)
	after := calls.Load()
	if after == 0 {
		t.Fatal("no check with a 10 ms interval")
	}
	time.Sleep(60 * time.Millisecond)
	if c := calls.Load(); c != after {
		t.Errorf("%d checks after the interval went back to 0", c-after)
	}
}

// Many goroutines report at once: per member, every delivered change
// starts where the one before ended, and none is from a status to itself.
func TestConcurrentReportsChainPerMember(t *testing.T) {
	var r recorder
	n := New(r.deliver, func(uint) {})
	defer n.Close()
	n.Set(7, 1, 0, nil)
	statuses := []probe.Status{probe.StatusOK, probe.StatusTimeout, probe.StatusSocketDown}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for i := 0; i < 500; i++ {
				v := report(statuses[rng.Intn(3)], statuses[rng.Intn(3)], statuses[rng.Intn(3)])
				n.Observe(time.Now(), 7, v)
			}
		}(int64(g))
	}
	wg.Wait()
	last := map[uint64]probe.Status{}
	got := r.got()
	if len(got) == 0 {
		t.Fatal("no change delivered")
	}
	for i, c := range got {
		if c.Old == c.New {
			t.Fatalf("change %d from a status to itself: %+v", i, c)
		}
		if prev, ok := last[c.Serial]; ok && prev != c.Old {
			t.Fatalf("change %d of member %d starts at %#x, the last one ended at %#x", i, c.Serial, c.Old, prev)
		}
		last[c.Serial] = c.New
	}
}
