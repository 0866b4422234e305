package probe

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libhaext/libhaext/pkg/conf"
)

// fakeScript is how one slot of fakeModule behaves; change it with
// fakeModule.update.
type fakeScript struct {
	serial  string
	label   string
	absent  bool          // C_GetTokenInfo says CKR_TOKEN_NOT_PRESENT
	latency time.Duration // added to every call on this slot
	rv      uint          // C_GetSessionInfo answers this CK_RV
	hang    chan struct{} // when set, C_GetSessionInfo blocks until it closes
	tokHang chan struct{} // when set, C_GetTokenInfo blocks until it closes
}

// fakeToken is one slot of fakeModule: its script and what it saw.
type fakeToken struct {
	fakeScript // guarded by fakeModule.mu

	inflight, maxInflight atomic.Int32
	infos                 atomic.Int32 // C_GetSessionInfo calls
}

// fakeModule is a scripted vendor module for the engine's timing rules.
type fakeModule struct {
	mu        sync.Mutex
	slots     map[uint]*fakeToken
	order     []uint
	sessions  map[uint]uint // handle -> slot
	next      uint
	slotsHang chan struct{} // when set, C_GetSlotList blocks until it closes
	notInit   bool

	opens, closes, reinits atomic.Int32
}

func newFake(n int) *fakeModule {
	f := &fakeModule{slots: make(map[uint]*fakeToken), sessions: make(map[uint]uint), next: 100}
	for i := 0; i < n; i++ {
		f.add(uint(10+i), &fakeToken{fakeScript: fakeScript{serial: fmt.Sprintf("%016x", 0xa0+i), label: fmt.Sprintf("m%02d", i)}})
	}
	return f
}

func (f *fakeModule) add(slot uint, t *fakeToken) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.slots[slot] = t
	f.order = append(f.order, slot)
}

func (f *fakeModule) token(slot uint) *fakeToken {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slots[slot]
}

// script returns a slot's current script, and whether the slot exists.
func (f *fakeModule) script(slot uint) (fakeScript, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.slots[slot]
	if !ok {
		return fakeScript{}, false
	}
	return t.fakeScript, true
}

// update changes a slot's script.
func (f *fakeModule) update(slot uint, change func(*fakeScript)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.slots[slot].fakeScript)
}

// group returns a conf.Group of the fake's first n tokens.
func (f *fakeModule) group(label string, serial uint64, n int) conf.Group {
	g := conf.Group{Label: label, Serial: serial}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, slot := range f.order[:n] {
		t := f.slots[slot]
		s, err := conf.ParseSerial(t.serial)
		if err != nil {
			panic(err)
		}
		g.Members = append(g.Members, conf.Member{Serial: s, SerialText: t.serial})
	}
	return g
}

func (f *fakeModule) Slots() ([]uint, error) {
	f.mu.Lock()
	hang := f.slotsHang
	f.mu.Unlock()
	if hang != nil {
		<-hang
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.notInit {
		return nil, Error(ckrCryptokiNotInitialized)
	}
	return append([]uint(nil), f.order...), nil
}

func (f *fakeModule) Token(slot uint) (string, string, error) {
	t, ok := f.script(slot)
	f.mu.Lock()
	notInit := f.notInit
	f.mu.Unlock()
	if notInit {
		return "", "", Error(ckrCryptokiNotInitialized)
	}
	if !ok {
		return "", "", Error(ckrSlotIDInvalid)
	}
	if t.tokHang != nil {
		<-t.tokHang
	}
	time.Sleep(t.latency)
	if t.absent {
		return "", "", Error(ckrTokenNotPresent)
	}
	return t.serial, t.label, nil
}

func (f *fakeModule) OpenSession(slot uint) (uint, error) {
	if t, ok := f.script(slot); !ok || t.absent {
		return 0, Error(ckrTokenNotPresent)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.notInit {
		return 0, Error(ckrCryptokiNotInitialized)
	}
	f.next++
	f.sessions[f.next] = slot
	f.opens.Add(1)
	return f.next, nil
}

func (f *fakeModule) CloseSession(h uint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sessions[h]; !ok {
		return Error(ckrSessionHandleInvalid)
	}
	delete(f.sessions, h)
	f.closes.Add(1)
	return nil
}

// closeAll forgets every session of a slot, as C_CloseAllSessions does.
func (f *fakeModule) closeAll(slot uint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for h, s := range f.sessions {
		if s == slot {
			delete(f.sessions, h)
		}
	}
}

func (f *fakeModule) finalize() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notInit = true
	f.sessions = make(map[uint]uint)
}

func (f *fakeModule) SessionInfo(h uint) error {
	f.mu.Lock()
	slot, ok := f.sessions[h]
	notInit := f.notInit
	f.mu.Unlock()
	if notInit {
		return Error(ckrCryptokiNotInitialized)
	}
	if !ok {
		return Error(ckrSessionHandleInvalid)
	}
	t := f.token(slot)
	sc, _ := f.script(slot)
	t.infos.Add(1)
	n := t.inflight.Add(1)
	defer t.inflight.Add(-1)
	for {
		m := t.maxInflight.Load()
		if n <= m || t.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	if sc.hang != nil {
		<-sc.hang
	}
	time.Sleep(sc.latency)
	if sc.rv != 0 {
		return Error(sc.rv)
	}
	return nil
}

func (f *fakeModule) Reinitialize() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reinits.Add(1)
	f.notInit = false
	return nil
}

// openSessions counts the sessions the fake holds per slot.
func (f *fakeModule) openSessions() map[uint]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[uint]int)
	for _, s := range f.sessions {
		out[s]++
	}
	return out
}
