package probe

import "github.com/libhaext/libhaext/pkg/conf"

// Module is the vendor PKCS#11 module as the engine uses it. pkg/cryptoki
// implements it over a real module; tests use a scripted fake.
//
// Errors carry the module's CK_RV as an Error (see RV). Every method may
// block for as long as the vendor wants: the engine never calls a member's
// methods from more than one goroutine at a time, and never from a status
// call's own goroutine.
type Module interface {
	// Slots lists the module's slots, with or without a token. It must not
	// need to reach the members (C_GetSlotList with tokenPresent false).
	Slots() ([]uint, error)
	// Token returns the serial number and label of the token in a slot
	// (C_GetTokenInfo), with the serial's padding removed.
	Token(slot uint) (serial, label string, err error)
	// OpenSession opens a read-only session on a slot without logging in.
	OpenSession(slot uint) (uint, error)
	// CloseSession closes a session the engine opened.
	CloseSession(session uint) error
	// SessionInfo is the lightweight call (C_GetSessionInfo).
	SessionInfo(session uint) error
	// Reinitialize initializes the module again after someone finalized it,
	// when that is the engine's to do (it initialized the module itself);
	// otherwise it fails and the engine waits for the host to do it.
	Reinitialize() error
}

// SocketChecker is stage 2: it reports, for each endpoint, whether this
// process holds a healthy connection to it. It must only use read-only
// system calls and must not block.
type SocketChecker func(endpoints []conf.Endpoint, healthy []bool)
