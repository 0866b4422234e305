package nosigpipe

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// sigpipeBit is SIGPIPE's bit in the masks of /proc/thread-self/status.
const sigpipeBit = 1 << (unix.SIGPIPE - 1)

// threadMask reads a mask (SigBlk, SigPnd) of the calling thread; the caller
// is locked to its thread.
func threadMask(t *testing.T, field string) uint64 {
	t.Helper()
	f, err := os.Open("/proc/thread-self/status")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			require.NoError(t, err)
			return m
		}
	}
	t.Fatalf("no %s in /proc/thread-self/status", field)
	return 0
}

// notified returns a channel that receives the process's SIGPIPEs (Go's
// handler then takes them instead of the default action).
func notified(t *testing.T) chan os.Signal {
	c := make(chan os.Signal, 4)
	signal.Notify(c, syscall.SIGPIPE)
	t.Cleanup(func() { signal.Stop(c) })
	return c
}

func noSignal(t *testing.T, c chan os.Signal) {
	t.Helper()
	select {
	case s := <-c:
		t.Errorf("a %v reached the process", s)
	case <-time.After(200 * time.Millisecond):
	}
}

func raiseOnThisThread() {
	_ = unix.Tgkill(os.Getpid(), unix.Gettid(), unix.SIGPIPE)
}

func TestDoTakesASIGPIPERaisedOnItsThread(t *testing.T) {
	c := notified(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	require.Zero(t, threadMask(t, "SigBlk")&sigpipeBit, "SIGPIPE starts unblocked")

	var blockedInside uint64
	taken := Do(func() {
		blockedInside = threadMask(t, "SigBlk") & sigpipeBit
		raiseOnThisThread()
	})
	assert.Equal(t, 1, taken)
	assert.NotZero(t, blockedInside, "SIGPIPE is blocked while fn runs")
	assert.Zero(t, threadMask(t, "SigBlk")&sigpipeBit, "and unblocked again after")
	assert.Zero(t, threadMask(t, "SigPnd")&sigpipeBit, "nothing left pending")
	noSignal(t, c)

	assert.Equal(t, 0, Do(func() {}), "nothing raised, nothing taken")
}

func TestDoKeepsAThreadsOwnBlockAndPendingSignal(t *testing.T) {
	c := notified(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var set, old unix.Sigset_t
	set.Val[0] = sigpipeBit
	require.NoError(t, unix.PthreadSigmask(unix.SIG_BLOCK, &set, &old))

	// Blocked before: a SIGPIPE raised inside is still taken, and the
	// thread's mask stays as it was.
	assert.Equal(t, 1, Do(raiseOnThisThread))
	assert.NotZero(t, threadMask(t, "SigBlk")&sigpipeBit, "still blocked, as before Do")

	// Pending before: not Do's to take; it reaches the process once the
	// thread unblocks it.
	raiseOnThisThread()
	assert.Equal(t, 0, Do(func() {}))
	assert.NotZero(t, threadMask(t, "SigPnd")&sigpipeBit, "the thread's own SIGPIPE is still pending")
	require.NoError(t, unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil))
	select {
	case <-c:
	case <-time.After(5 * time.Second):
		t.Error("the pending SIGPIPE was lost")
	}
}

func TestDoRestoresTheMaskWhenFnPanics(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	func() {
		defer func() { _ = recover() }()
		Do(func() { panic("boom") })
	}()
	assert.Zero(t, threadMask(t, "SigBlk")&sigpipeBit)
}

func TestWriteToABrokenPipe(t *testing.T) {
	c := notified(t)
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer w.Close()
	r.Close()
	n, err := Write(int(w.Fd()), []byte("line\n"))
	assert.Zero(t, n)
	assert.True(t, errors.Is(err, unix.EPIPE), "EPIPE: %v", err)
	assert.Contains(t, fmt.Sprint(err), "fd ")
	noSignal(t, c)
}

func TestWriteWritesEverything(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB: more than a pipe holds
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		got <- b
	}()
	n, err := FD(w.Fd()).Write(data)
	w.Close()
	assert.NoError(t, err)
	assert.Equal(t, len(data), n)
	assert.Equal(t, data, <-got)
}

// TestStdoutToABrokenPipe runs children whose standard output is a pipe
// without a reader: a write through os.Stdout kills the child (the Go
// runtime raises SIGPIPE itself), a raw write(2) signals it, Stdout does
// neither and returns EPIPE.
func TestStdoutToABrokenPipe(t *testing.T) {
	for _, c := range []struct {
		mode, want string
		killed     bool
	}{
		{"osfile", "", true},
		{"raw", "EPIPE signal", false},
		{"guarded", "EPIPE no signal", false},
	} {
		r, w, err := os.Pipe()
		require.NoError(t, err)
		r.Close()
		var stderr bytes.Buffer
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "NOSIGPIPE_CHILD="+c.mode)
		cmd.Stdout, cmd.Stderr = w, &stderr
		err = cmd.Run()
		w.Close()
		if c.killed {
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, c.mode)
			ws := ee.Sys().(syscall.WaitStatus)
			assert.True(t, ws.Signaled() && ws.Signal() == syscall.SIGPIPE, "%s: %v %s", c.mode, err, &stderr)
			continue
		}
		assert.NoError(t, err, "%s: %s", c.mode, &stderr)
		assert.Equal(t, c.want, strings.TrimSpace(stderr.String()), c.mode)
	}
}

// TestMain runs the tests, or the child of TestStdoutToABrokenPipe when
// NOSIGPIPE_CHILD names its mode.
func TestMain(m *testing.M) {
	if mode := os.Getenv("NOSIGPIPE_CHILD"); mode != "" {
		child(mode)
	}
	os.Exit(m.Run())
}

// child writes a line to its standard output in one of three ways and
// reports on stderr what came of it, unless it is killed.
func child(mode string) {
	line := []byte("line\n")
	if mode == "osfile" {
		_, _ = os.Stdout.Write(line)
		fmt.Fprintln(os.Stderr, "survived")
		os.Exit(0)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGPIPE)
	var err error
	if mode == "raw" {
		_, err = unix.Write(1, line)
	} else {
		_, err = Stdout.Write(line)
	}
	var got string
	if errors.Is(err, unix.EPIPE) {
		got = "EPIPE"
	} else {
		got = fmt.Sprint(err)
	}
	select {
	case <-sigs:
		got += " signal"
	case <-time.After(300 * time.Millisecond):
		got += " no signal"
	}
	fmt.Fprintln(os.Stderr, got)
	os.Exit(0)
}
