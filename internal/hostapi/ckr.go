package hostapi

/*
#cgo CFLAGS: -Wall -Werror
#cgo pkg-config: p11-kit-1
#include "ckr.h"
*/
import "C"

// RVConnection is ckr.h's haext_rv_connection, the twin of
// cryptoki.ConnectionLost: the front reports a host call that answers it
// to the engine as a host error.
func RVConnection(rv uint) bool { return C.haext_rv_connection(C.CK_RV(rv)) != 0 }

// RVDropped is ckr.h's haext_rv_dropped, the twin of
// cryptoki.SessionDropped: the front forgets a session that answers it.
func RVDropped(rv uint) bool { return C.haext_rv_dropped(C.CK_RV(rv)) != 0 }

// RVFailover is ckr.h's haext_rv_failover, the twin of cryptoki.FailOver:
// the HA slot issues an operation again on the next member when its member
// answers it.
func RVFailover(rv uint) bool { return C.haext_rv_failover(C.CK_RV(rv)) != 0 }
