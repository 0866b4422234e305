// Command libhaext-pkcs11 is built with -buildmode=c-shared into
// libhaext-pkcs11.so, the PKCS#11 module a host loads instead of its
// vendor's: the C_* functions of PKCS#11 2.40 (internal/front, plain C
// trampolines to the vendor module) and the CA_* calls of libhaext
// (internal/capi), so the process has one Go runtime. exports.map keeps
// every other symbol out of the host's namespace.
package main

import (
	_ "github.com/libhaext/libhaext/internal/capi"  // the CA_* exports
	_ "github.com/libhaext/libhaext/internal/front" // the C_* exports
)

func main() {}
