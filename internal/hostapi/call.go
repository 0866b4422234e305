package hostapi

// call.c, the fence of call.h, is compiled here, once: pkg/cryptoki imports
// this package, and every vendor call of libhaext.so's C (pkg/cryptoki,
// pkg/probe's probe threads) enters that one fence.

/*
#cgo CFLAGS: -Wall -Werror
#cgo pkg-config: p11-kit-1
*/
import "C"
