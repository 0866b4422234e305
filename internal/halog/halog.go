// Package halog writes the HA log: one line per member state transition and
// one per configuration warning, to haErrorLog.txt in the configured
// directory (rotated at logLen bytes) and, when asked, to standard output.
// It is Luna-compatible in its keys (haLogStatus, haLogPath, logLen,
// haLogToStdout); without them the library writes nothing anywhere.
//
// The log lives beside a host that did not ask for it, so it never harms
// it: standard output is written with nosigpipe.Stdout, so a pipe nobody
// reads never signals the host; the file is opened with O_NOFOLLOW and
// refused unless it is a regular file of the process's own user with a
// single link, and files are created with mode 0600, on rotation with
// O_EXCL. A log that cannot be written is skipped silently.
//
// Writing happens on the Logger's own goroutine: a status call only queues
// a line and never waits for the disk. When the queue is full, lines are
// dropped and the count of dropped lines is logged with the next line that
// fits.
package halog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/libhaext/libhaext/internal/nosigpipe"
	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/probe"
)

// FileName is the log file's name inside haLogPath.
const FileName = "haErrorLog.txt"

// queueLen is how many lines may wait for the writer.
const queueLen = 1024

// Logger is an HA log. The zero value is not usable; use New.
type Logger struct {
	path     string // empty: no file
	maxBytes int64
	stdout   io.Writer // nil: not to stdout

	lines   chan string
	mu      sync.Mutex // guards dropped and closed
	dropped int
	closed  bool
	done    chan struct{}

	rotated func() // tests: runs between a rotation's rename and open
}

// New returns a Logger for the settings, or nil when they ask for no log at
// all. With s.ToStdout the lines also go to stdout: pass nil for the
// process's standard output, which the Logger then writes with
// nosigpipe.Stdout (os.Stdout and os.Stderr are taken to mean fd 1 and fd 2
// and written the same way, never through the Go runtime's *os.File, which
// raises SIGPIPE on a broken pipe). Tests pass a writer of their own.
func New(s conf.HALog, stdout io.Writer) *Logger {
	if !s.Enabled && !s.ToStdout {
		return nil
	}
	l := &Logger{maxBytes: s.MaxBytes, lines: make(chan string, queueLen), done: make(chan struct{})}
	if s.Enabled {
		l.path = filepath.Join(s.Dir, FileName)
	}
	if s.ToStdout {
		l.stdout = guarded(stdout)
	}
	if l.maxBytes <= 0 {
		l.maxBytes = 1 << 20
	}
	go l.run()
	return l
}

// guarded returns w, or a writer of the same file descriptor that never
// signals the process when w is nil (fd 1), os.Stdout or os.Stderr.
func guarded(w io.Writer) io.Writer {
	switch w {
	case nil, io.Writer(os.Stdout):
		return nosigpipe.Stdout
	case io.Writer(os.Stderr):
		return nosigpipe.Stderr
	}
	return w
}

// Transition logs a member's change of state; it never blocks.
func (l *Logger) Transition(t probe.Transition) {
	old := "none"
	if !t.First {
		old = t.Old.String()
	}
	l.queue(t.Time, fmt.Sprintf("group=%q group_serial=%d member=%d member_hex=%016x old=%s new=%s reason=%q",
		t.Group, t.GroupSerial, t.Serial, t.Serial, old, t.New, t.New.Reason()))
}

// Warning logs a configuration warning; it never blocks.
func (l *Logger) Warning(msg string) {
	l.queue(time.Now(), fmt.Sprintf("warning=%q", msg))
}

func (l *Logger) queue(at time.Time, msg string) {
	line := at.UTC().Format("2006-01-02T15:04:05.000Z") + " " + msg + "\n"
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	if l.dropped > 0 {
		select {
		case l.lines <- fmt.Sprintf("%s dropped=%d (the log could not keep up)\n",
			at.UTC().Format("2006-01-02T15:04:05.000Z"), l.dropped):
			l.dropped = 0
		default:
			l.dropped++
			return
		}
	}
	select {
	case l.lines <- line:
	default:
		l.dropped++
	}
}

// Close writes what is queued and stops the writer.
func (l *Logger) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	close(l.lines)
	l.mu.Unlock()
	<-l.done
}

func (l *Logger) run() {
	defer close(l.done)
	var f *os.File
	var size int64
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for line := range l.lines {
		if l.stdout != nil {
			_, _ = io.WriteString(l.stdout, line)
		}
		if l.path == "" {
			continue
		}
		if f != nil && size+int64(len(line)) > l.maxBytes {
			f.Close()
			f = l.rotate()
			size = 0
		}
		if f == nil {
			var err error
			if f, size, err = open(l.path, false); err != nil {
				continue // an unwritable log must not disturb the host
			}
		}
		n, _ := f.WriteString(line)
		size += int64(n)
	}
}

// rotate keeps the full file as .1 and creates a new one, or returns nil
// when it cannot (the next line tries again with open).
func (l *Logger) rotate() *os.File {
	// rename replaces whatever is at .1, a symbolic link included, and
	// never follows it.
	_ = os.Rename(l.path, l.path+".1")
	if l.rotated != nil {
		l.rotated()
	}
	f, _, err := open(l.path, true)
	if err != nil {
		return nil
	}
	return f
}

// open opens the log file at path for appending, creating it with mode
// 0600; with fresh, only a file it creates itself (O_EXCL). It refuses
// anything but a regular file of this process's user with one link: a
// symbolic link (O_NOFOLLOW), a FIFO (O_NONBLOCK: opening it neither blocks
// nor is accepted), a device, or a hard link to another file.
func open(path string, fresh bool) (*os.File, int64, error) {
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND | syscall.O_NOFOLLOW | syscall.O_NONBLOCK
	if fresh {
		flags |= os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err == nil {
		err = checkFile(st)
	}
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("HA log %s: %w", path, err)
	}
	return f, st.Size(), nil
}

// checkFile accepts a regular file of this process's user with one link.
func checkFile(st os.FileInfo) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%v)", st.Mode().Type())
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("no owner information")
	}
	if int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("owned by uid %d, not by this process's uid %d", sys.Uid, os.Geteuid())
	}
	if sys.Nlink != 1 {
		return fmt.Errorf("has %d links", sys.Nlink)
	}
	return nil
}
