// Command libhaext is built with -buildmode=c-shared into libhaext.so, the
// library an application loads beside its vendor PKCS#11 module. The C ABI
// (the CA_* entry points) is internal/capi; exports.map keeps every other
// symbol, Go's and miekg/pkcs11's among them, out of the host's namespace.
package main

import _ "github.com/libhaext/libhaext/internal/capi" // the CA_* exports

func main() {}
