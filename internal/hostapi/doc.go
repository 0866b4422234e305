// Package hostapi holds hostapi.h, the C contract between a front module
// (which sees the host's PKCS#11 calls) and the probe engine's C prober
// threads: the host's function list, a gate around libhaext's vendor calls,
// and sessions lent for one call. It has no Go code.
package hostapi
