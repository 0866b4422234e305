// Package hostapi holds hostapi.h, the C contract between a front module
// (which sees the host's PKCS#11 calls) and the probe engine's probe
// threads: the host's function list, a gate around libhaext's vendor calls,
// and sessions lent for one call; and call.h with call.c, the one way
// libhaext's C code calls the vendor (the fork fence, the gate, the SIGPIPE
// guard). It has no Go code of its own: importing it links the fence.
package hostapi
