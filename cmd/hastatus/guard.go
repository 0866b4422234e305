package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
)

// guardEnv marks the child process that does hastatus's work under the
// guard.
const guardEnv = "HASTATUS_GUARDED"

// A vendor module runs inside hastatus's process, and some end that process
// themselves: Caml Crush's TLS client calls exit(-1) in its library
// constructor when the server's certificate does not verify, before any
// PKCS#11 call could return an error. So hastatus does its work in a child
// process (itself again) and reports such an end as a module error, exit
// status 3, with the module's last words, instead of dying with an exit
// status a monitoring system cannot read. The child's standard output and
// error pass through as they are written.

// guard runs hastatus with args in a child process and returns the exit
// status to use.
func guard(args []string) int {
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	return supervise(exe, args, os.Environ(), os.Stdout, os.Stderr, sigs)
}

// supervise starts exe with args and env (plus guardEnv), passes the
// signals it receives on to the child, and returns the child's exit status
// when it is one of hastatus's own (0..3). Any other end of the child (an
// exit status hastatus never uses, or a signal the guard did not pass on)
// is reported on stderr with the child's last lines there, and gives
// exitError.
func supervise(exe string, args, env []string, stdout io.Writer, stderr io.Writer, sigs <-chan os.Signal) int {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(append([]string(nil), env...), guardEnv+"=1")
	cmd.Stdin = os.Stdin
	cmd.Stdout = stdout
	tail := &tailWriter{w: stderr}
	cmd.Stderr = tail
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "hastatus: %v\n", err)
		return exitError
	}
	var forwarded sync.Map // signals passed on to the child
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				forwarded.Store(s, true)
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	_ = cmd.Wait()
	close(done)
	st := cmd.ProcessState
	if code := st.ExitCode(); code >= exitAlive && code <= exitError {
		return code
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		if _, passed := forwarded.Load(ws.Signal()); passed {
			return 128 + int(ws.Signal())
		}
	}
	fmt.Fprintf(stderr, "hastatus: the check ended without a report (%s): the vendor module ended the process%s\n",
		st, tail.lastWords())
	return exitError
}

// tailWriter passes everything on to w and keeps the last bytes written.
type tailWriter struct {
	w    io.Writer
	mu   sync.Mutex
	last []byte
}

const tailKeep = 2048

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	t.last = append(t.last, p...)
	if len(t.last) > tailKeep {
		t.last = append([]byte(nil), t.last[len(t.last)-tailKeep:]...)
	}
	t.mu.Unlock()
	return t.w.Write(p)
}

// lastWords is "; it said: " and the last lines the child wrote that are
// not hastatus's own (at most three, joined by " | ", escaped for a
// terminal as labels are), or "".
func (t *tailWriter) lastWords() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var lines []string
	for _, l := range bytes.Split(t.last, []byte("\n")) {
		s := strings.TrimSpace(string(l))
		if s != "" && !strings.HasPrefix(s, "hastatus:") {
			lines = append(lines, printable(s))
		}
	}
	if len(lines) == 0 {
		return ""
	}
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return "; it said: " + strings.Join(lines, " | ")
}
