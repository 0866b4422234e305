// Package halog writes the HA log: one line per member state transition and
// one per configuration warning, to haErrorLog.txt in the configured
// directory (rotated at logLen bytes) and, when asked, to standard output.
// It is Luna-compatible in its keys (haLogStatus, haLogPath, logLen,
// haLogToStdout); without them the library writes nothing anywhere.
//
// Writing happens on the Logger's own goroutine: a status call only queues
// a line and never waits for the disk. When the queue is full, lines are
// dropped and the count of dropped lines is logged with the next line that
// fits.
package halog

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

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
}

// New returns a Logger for the settings, or nil when they ask for no log at
// all. stdout is where haLogToStdout writes (os.Stdout in the library).
func New(s conf.HALog, stdout io.Writer) *Logger {
	if !s.Enabled && !s.ToStdout {
		return nil
	}
	l := &Logger{maxBytes: s.MaxBytes, lines: make(chan string, queueLen), done: make(chan struct{})}
	if s.Enabled {
		l.path = filepath.Join(s.Dir, FileName)
	}
	if s.ToStdout {
		l.stdout = stdout
	}
	if l.maxBytes <= 0 {
		l.maxBytes = 1 << 20
	}
	go l.run()
	return l
}

// Path returns the log file's path, or "" when the log goes to stdout only.
func (l *Logger) Path() string { return l.path }

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
			f = nil
			_ = os.Rename(l.path, l.path+".1") // keep one old file
		}
		if f == nil {
			var err error
			if f, size, err = open(l.path); err != nil {
				continue // an unwritable log must not disturb the host
			}
		}
		n, _ := f.WriteString(line)
		size += int64(n)
	}
}

func open(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}
