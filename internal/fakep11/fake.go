// Package fakep11 is a scripted vendor PKCS#11 module for unit tests of the
// engine's timing rules. It is a real C function list (list.c), so that the
// code under test calls it exactly as it calls a vendor module (through
// pkg/cryptoki and the engine's C lanes); each entry calls back into the Go
// script here. One fake is current at a time (New makes it so): tests that
// use it must not run in parallel.
package fakep11

/*
#cgo CFLAGS: -Wall -Werror
#cgo pkg-config: p11-kit-1
#include <stdlib.h>
#include <p11-kit/pkcs11.h>
CK_FUNCTION_LIST_PTR fake_list(void);
*/
import "C"

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/miekg/pkcs11"

	"github.com/libhaext/libhaext/pkg/conf"
)

// CK_RV values the fake answers with.
const (
	ckrSlotIDInvalid          = pkcs11.CKR_SLOT_ID_INVALID
	ckrTokenNotPresent        = pkcs11.CKR_TOKEN_NOT_PRESENT
	ckrSessionHandleInvalid   = pkcs11.CKR_SESSION_HANDLE_INVALID
	ckrBufferTooSmall         = pkcs11.CKR_BUFFER_TOO_SMALL
	ckrCryptokiNotInitialized = pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED
	ckrAlreadyInitialized     = pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED
)

// Script is how one slot behaves; change it with Module.Update.
type Script struct {
	Serial  string
	Label   string
	Absent  bool          // C_GetTokenInfo says CKR_TOKEN_NOT_PRESENT
	Latency time.Duration // added to every call on this slot
	RV      uint          // C_GetSessionInfo answers this CK_RV
	Hang    chan struct{} // when set, C_GetSessionInfo blocks until it closes
	TokHang chan struct{} // when set, C_GetTokenInfo blocks until it closes
	Sigpipe bool          // C_GetSessionInfo raises SIGPIPE on the calling thread
}

// Token is one slot of the fake: its script and what it saw.
type Token struct {
	Script // guarded by Module.mu

	inflight    atomic.Int32
	MaxInflight atomic.Int32 // most C_GetSessionInfo calls in flight at once
	Infos       atomic.Int32 // C_GetSessionInfo calls

	tokInflight    atomic.Int32
	MaxTokInflight atomic.Int32 // most C_GetTokenInfo calls in flight at once
	TokInfos       atomic.Int32 // C_GetTokenInfo calls
}

// Module is the fake module.
type Module struct {
	mu        sync.Mutex
	slots     map[uint]*Token
	order     []uint
	sessions  map[uint]uint // handle -> slot
	next      uint
	slotsHang chan struct{}
	notInit   bool

	// proxyLock, when SerializeSlotList is set, models p11-kit's proxy:
	// C_GetSlotList takes it exclusively, every C_GetSessionInfo shared,
	// so a slot list waits for a hung member and every other call waits
	// behind the slot list.
	proxyLock         sync.RWMutex
	serializeSlotList atomic.Bool

	// Opens, Closes and Inits count C_OpenSession, C_CloseSession and
	// successful C_Initialize calls; SlotLists counts C_GetSlotList calls
	// and NoSlotInfos C_GetTokenInfo calls on slots the fake does not have.
	Opens, Closes, Inits, SlotLists, NoSlotInfos atomic.Int32
}

var current atomic.Pointer[Module]

// New returns a fake, not initialized yet, with n tokens in slots 10, 11, ..., with
// serials 00000000000000a0, ...a1, ... and labels m00, m01, ..., and makes
// it the current one.
func New(n int) *Module {
	f := &Module{slots: make(map[uint]*Token), sessions: make(map[uint]uint), next: 100, notInit: true}
	for i := 0; i < n; i++ {
		f.Add(uint(10+i), &Token{Script: Script{Serial: fmt.Sprintf("%016x", 0xa0+i), Label: fmt.Sprintf("m%02d", i)}})
	}
	current.Store(f)
	return f
}

// List returns the fake's function list (a CK_FUNCTION_LIST_PTR).
func List() unsafe.Pointer { return unsafe.Pointer(C.fake_list()) }

// Add puts a token in a slot.
func (f *Module) Add(slot uint, t *Token) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.slots[slot] = t
	f.order = append(f.order, slot)
}

// Move moves the token of one slot to another, as a renumbering does.
func (f *Module) Move(from, to uint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.slots[from]
	delete(f.slots, from)
	f.slots[to] = t
	for i, s := range f.order {
		if s == from {
			f.order[i] = to
		}
	}
}

// Token returns the token of a slot.
func (f *Module) Token(slot uint) *Token {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slots[slot]
}

func (f *Module) script(slot uint) (Script, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.slots[slot]
	if !ok {
		return Script{}, false
	}
	return t.Script, true
}

// Update changes a slot's script.
func (f *Module) Update(slot uint, change func(*Script)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.slots[slot].Script)
}

// HangSlotList makes C_GetSlotList block until release closes.
func (f *Module) HangSlotList(release chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.slotsHang = release
}

// SerializeSlotList makes C_GetSlotList wait for every C_GetSessionInfo
// in flight and hold up new ones while it waits, as p11-kit's proxy does.
func (f *Module) SerializeSlotList() { f.serializeSlotList.Store(true) }

// Group returns a conf.Group of the fake's first n tokens.
func (f *Module) Group(label string, serial uint64, n int) conf.Group {
	g := conf.Group{Label: label, Serial: serial}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, slot := range f.order[:n] {
		t := f.slots[slot]
		s, err := conf.ParseSerial(t.Serial)
		if err != nil {
			panic(err)
		}
		g.Members = append(g.Members, conf.Member{Serial: s, SerialText: t.Serial})
	}
	return g
}

// CloseAll forgets every session of a slot, as C_CloseAllSessions does.
func (f *Module) CloseAll(slot uint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for h, s := range f.sessions {
		if s == slot {
			delete(f.sessions, h)
		}
	}
}

// HostInitialize does what the host's C_Initialize does: a module the host
// initialized is the host's, and libhaext takes no initialization of it.
func (f *Module) HostInitialize() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notInit = false
}

// Finalize does what the host's C_Finalize does.
func (f *Module) Finalize() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notInit = true
	f.sessions = make(map[uint]uint)
}

// OpenSessions counts the sessions the fake holds per slot.
func (f *Module) OpenSessions() map[uint]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[uint]int)
	for _, s := range f.sessions {
		out[s]++
	}
	return out
}

func (f *Module) initialized() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.notInit
}

//export fakeInitialize
func fakeInitialize() C.CK_RV {
	f := current.Load()
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.notInit {
		return ckrAlreadyInitialized
	}
	f.notInit = false
	f.Inits.Add(1)
	return 0
}

//export fakeFinalize
func fakeFinalize() C.CK_RV {
	f := current.Load()
	if !f.initialized() {
		return ckrCryptokiNotInitialized
	}
	f.Finalize()
	return 0
}

//export fakeGetInfo
func fakeGetInfo() C.CK_RV {
	if !current.Load().initialized() {
		return ckrCryptokiNotInitialized
	}
	return 0
}

//export fakeSlotList
func fakeSlotList(list *C.CK_SLOT_ID, count *C.CK_ULONG) C.CK_RV {
	f := current.Load()
	f.SlotLists.Add(1)
	if f.serializeSlotList.Load() {
		f.proxyLock.Lock()
		defer f.proxyLock.Unlock()
	}
	f.mu.Lock()
	hang := f.slotsHang
	f.mu.Unlock()
	if hang != nil {
		<-hang
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.notInit {
		return ckrCryptokiNotInitialized
	}
	if list == nil {
		*count = C.CK_ULONG(len(f.order))
		return 0
	}
	if int(*count) < len(f.order) {
		*count = C.CK_ULONG(len(f.order))
		return ckrBufferTooSmall
	}
	dst := unsafe.Slice(list, len(f.order))
	for i, s := range f.order {
		dst[i] = C.CK_SLOT_ID(s)
	}
	*count = C.CK_ULONG(len(f.order))
	return 0
}

//export fakeTokenInfo
func fakeTokenInfo(slot C.CK_SLOT_ID, serial *C.char, serialLen C.size_t, label *C.char, labelLen C.size_t) C.CK_RV {
	f := current.Load()
	t, ok := f.script(uint(slot))
	if !f.initialized() {
		return ckrCryptokiNotInitialized
	}
	if !ok {
		f.NoSlotInfos.Add(1)
		return ckrSlotIDInvalid
	}
	tok := f.Token(uint(slot))
	if tok == nil { // moved meanwhile
		return ckrSlotIDInvalid
	}
	tok.TokInfos.Add(1)
	n := tok.tokInflight.Add(1)
	defer tok.tokInflight.Add(-1)
	raise(&tok.MaxTokInflight, n)
	if t.TokHang != nil {
		<-t.TokHang
	}
	time.Sleep(t.Latency)
	if t.Absent {
		return ckrTokenNotPresent
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(serial)), int(serialLen)), t.Serial)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(label)), int(labelLen)), t.Label)
	return 0
}

//export fakeOpenSession
func fakeOpenSession(slot C.CK_SLOT_ID, session *C.CK_SESSION_HANDLE) C.CK_RV {
	f := current.Load()
	if t, ok := f.script(uint(slot)); !ok || t.Absent {
		return ckrTokenNotPresent
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.notInit {
		return ckrCryptokiNotInitialized
	}
	f.next++
	f.sessions[f.next] = uint(slot)
	f.Opens.Add(1)
	*session = C.CK_SESSION_HANDLE(f.next)
	return 0
}

//export fakeCloseSession
func fakeCloseSession(session C.CK_SESSION_HANDLE) C.CK_RV {
	f := current.Load()
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sessions[uint(session)]; !ok {
		return ckrSessionHandleInvalid
	}
	delete(f.sessions, uint(session))
	f.Closes.Add(1)
	return 0
}

//export fakeSessionInfo
func fakeSessionInfo(session C.CK_SESSION_HANDLE) C.CK_RV {
	f := current.Load()
	f.mu.Lock()
	slot, ok := f.sessions[uint(session)]
	notInit := f.notInit
	f.mu.Unlock()
	if notInit {
		return ckrCryptokiNotInitialized
	}
	if !ok {
		return ckrSessionHandleInvalid
	}
	if f.serializeSlotList.Load() {
		f.proxyLock.RLock()
		defer f.proxyLock.RUnlock()
	}
	t := f.Token(slot)
	sc, _ := f.script(slot)
	t.Infos.Add(1)
	n := t.inflight.Add(1)
	defer t.inflight.Add(-1)
	raise(&t.MaxInflight, n)
	if sc.Hang != nil {
		<-sc.Hang
	}
	if sc.Sigpipe { // as a write to a dead socket does
		_ = syscall.Tgkill(syscall.Getpid(), syscall.Gettid(), syscall.SIGPIPE)
	}
	time.Sleep(sc.Latency)
	return C.CK_RV(sc.RV)
}

// raise makes max at least n.
func raise(max *atomic.Int32, n int32) {
	for {
		m := max.Load()
		if n <= m || max.CompareAndSwap(m, n) {
			return
		}
	}
}
