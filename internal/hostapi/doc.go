// Package hostapi holds hostapi.h, the C contract between a front module
// (which sees the host's PKCS#11 calls) and the probe engine's probe
// threads: the host's function list, a gate around libhaext's vendor calls,
// and sessions lent for one call; call.h with call.c, the one way
// libhaext's C code calls the vendor (the fork fence, the gate, the SIGPIPE
// guard); and ckr.h, the C twin of pkg/cryptoki's CK_RV classes. Its only
// Go code exposes ckr.h to its test, which checks it against pkg/cryptoki
// (the header lives in this package's directory, so that the Go build
// cache sees a change to it); importing the package links the fence.
package hostapi
