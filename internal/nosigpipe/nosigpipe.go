// Package nosigpipe writes to file descriptors, standard output among
// them, without ever letting a broken pipe signal the process.
//
// A library loaded into someone else's process must not kill it, nor run its
// SIGPIPE handler, because a pipe the library writes to lost its reader.
// Two things raise SIGPIPE on such a write:
//
//   - the kernel, on the writing thread, whenever write(2) fails with EPIPE;
//   - the Go runtime itself, when an *os.File write to fd 1 or 2 fails with
//     EPIPE: it then resets SIGPIPE to the default action and raises it,
//     whatever the host did with the signal (ignored it, or installed its
//     own handler), so the host dies.
//
// Write avoids the second by calling write(2) directly, and the first by
// running the call under Do: on an OS thread where SIGPIPE is blocked, so
// that the kernel's signal stays pending on that thread, where Do takes it
// with sigtimedwait before the thread's mask is restored. No handler and no
// default action ever sees it.
//
// The rule is the guard's of internal/hostapi/call.h, which libhaext's C
// uses around a vendor call. This one stays apart because what it guards
// is Go code, not one C call: fn runs between two cgo calls, on an OS
// thread the goroutine must stay locked to, and it writes standard output
// from Go, where no vendor call, fence or gate is involved.
package nosigpipe

/*
#include <pthread.h>
#include <signal.h>
#include <time.h>

typedef struct {
	int was_blocked; // SIGPIPE was blocked on the thread before the guard
	int was_pending; // a SIGPIPE was pending before the guard: not ours
} nosigpipe_state;

static void nosigpipe_block(nosigpipe_state *st) {
	sigset_t set, old, pending;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	st->was_blocked = sigismember(&old, SIGPIPE);
	sigemptyset(&pending);
	sigpending(&pending);
	st->was_pending = sigismember(&pending, SIGPIPE);
}

// Takes a SIGPIPE raised while the guard was up, restores the thread's mask
// and returns how many it took (0 or 1: SIGPIPE does not queue).
static int nosigpipe_restore(const nosigpipe_state *st) {
	sigset_t set;
	struct timespec zero = {0, 0};
	int taken = 0;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	if (!st->was_pending && sigtimedwait(&set, NULL, &zero) == SIGPIPE) {
		taken = 1;
	}
	if (!st->was_blocked) {
		pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	}
	return taken;
}
*/
import "C"

import (
	"errors"
	"io"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Do runs fn with SIGPIPE blocked on the calling goroutine's OS thread, to
// which the goroutine stays locked meanwhile. A SIGPIPE raised on that
// thread while fn runs (by the kernel, on a write to a broken pipe or
// socket) is taken before the thread's signal mask is restored, so it runs
// no handler and no default action. Do returns how many it took, 0 or 1.
//
// A SIGPIPE that was already pending when Do began is left alone: it is not
// Do's to take. fn must not unblock SIGPIPE itself.
func Do(fn func()) (taken int) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var st C.nosigpipe_state
	C.nosigpipe_block(&st)
	defer func() { taken = int(C.nosigpipe_restore(&st)) }()
	fn()
	return 0
}

// Write writes all of p to the file descriptor fd with write(2), under Do.
// It retries interrupted and partial writes. On a broken pipe it returns
// an error wrapping unix.EPIPE, and nothing signals the process.
func Write(fd int, p []byte) (n int, err error) {
	Do(func() {
		for n < len(p) {
			m, e := unix.Write(fd, p[n:])
			switch {
			case errors.Is(e, unix.EINTR):
				continue
			case e != nil:
				err = &WriteError{FD: fd, Err: e}
				return
			case m <= 0:
				err = &WriteError{FD: fd, Err: io.ErrShortWrite}
				return
			}
			n += m
		}
	})
	return n, err
}

// WriteError is a failed Write.
type WriteError struct {
	FD  int   // the file descriptor
	Err error // the reason, e.g. unix.EPIPE
}

func (e *WriteError) Error() string {
	return "nosigpipe: write to fd " + strconv.Itoa(e.FD) + ": " + e.Err.Error()
}

// Unwrap returns the reason.
func (e *WriteError) Unwrap() error { return e.Err }

// FD is an io.Writer to a file descriptor it does not own, written with
// Write. Its zero value is not useful; convert a number: nosigpipe.FD(1).
type FD int

// Write writes p to the file descriptor with Write.
func (fd FD) Write(p []byte) (int, error) { return Write(int(fd), p) }

// Stdout is the process's standard output, fd 1, as an io.Writer that never
// signals the process.
const Stdout = FD(1)

// Stderr is the process's standard error, fd 2, as an io.Writer that never
// signals the process.
const Stderr = FD(2)
