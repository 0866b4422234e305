// Package halog writes the HA log: one line per member state transition and
// one per configuration warning, to haErrorLog.txt in the configured
// directory (rotated at logLen bytes) and, when asked, to standard output.
// It is Luna-compatible in its keys (haLogStatus, haLogPath, logLen,
// haLogToStdout); without them the library writes nothing anywhere.
//
// The log lives beside a host that did not ask for it, so it never harms
// it: standard output is written with nosigpipe.Stdout, so a pipe nobody
// reads never signals the host. The directory must be an absolute path
// with no symbolic link on the way (openat2 RESOLVE_NO_SYMLINKS; CheckDir
// says why a directory is refused): a link would let whoever controls it
// point the host's writes anywhere. The file is opened relative to that
// directory with O_NOFOLLOW and refused unless it is a regular file of the
// process's own user with a single link, and files are created with mode
// 0600, on rotation with O_EXCL. A log that cannot be written is skipped
// silently; a refused directory is said once, as a warning line on
// standard output when haLogToStdout is on, and by hastatus.
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
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
	dir      string // haLogPath; empty: no file
	dirFD    int    // dir, opened by openDir; -1 until it is
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
	l := &Logger{dirFD: -1, maxBytes: s.MaxBytes, lines: make(chan string, queueLen), done: make(chan struct{})}
	if s.Enabled {
		l.dir = s.Dir
	}
	if s.ToStdout {
		l.stdout = guarded(stdout)
	}
	if l.maxBytes <= 0 {
		l.maxBytes = 1 << 20
	}
	if err := CheckDir(l.dir); l.dir != "" && err != nil {
		l.Warning(err.Error() + "; HA logging to a file is disabled")
		l.dir = ""
	}
	go l.run()
	return l
}

// CheckDir reports why dir cannot hold the HA log: it is not an absolute
// path, or a symbolic link stands on the way to it. A directory that does
// not exist yet is fine (it is looked for again at each line).
func CheckDir(dir string) error {
	fd, err := openDir(dir)
	if fd >= 0 {
		unix.Close(fd)
	}
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// openDir opens dir as the log's directory without following a symbolic
// link anywhere on the way.
func openDir(dir string) (int, error) {
	if !filepath.IsAbs(dir) {
		return -1, fmt.Errorf("HA log directory %q (haLogPath) is not an absolute path", dir)
	}
	how := unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS}
	fd, err := unix.Openat2(unix.AT_FDCWD, dir, &how)
	if errors.Is(err, unix.ENOSYS) {
		fd, err = openDirWalk(dir) // before Linux 5.6
	}
	switch {
	case errors.Is(err, unix.ELOOP):
		return -1, fmt.Errorf("HA log directory %s (haLogPath) passes through a symbolic link: name the real directory", dir)
	case err != nil:
		return -1, fmt.Errorf("HA log directory %s: %w", dir, err)
	}
	return fd, nil
}

// openDirWalk is openDir without openat2: each component is opened
// relative to the one before with O_NOFOLLOW.
func openDirWalk(dir string) (int, error) {
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	for _, name := range strings.Split(filepath.Clean(dir), "/") {
		if name == "" {
			continue
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOTDIR) {
			var st unix.Stat_t
			if unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = unix.ELOOP
			}
		}
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
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
	defer func() {
		if l.dirFD >= 0 {
			unix.Close(l.dirFD)
		}
	}()
	for line := range l.lines {
		if l.stdout != nil {
			_, _ = io.WriteString(l.stdout, line)
		}
		if l.dir == "" {
			continue
		}
		if l.dirFD < 0 {
			fd, err := openDir(l.dir)
			if err != nil {
				continue // an unwritable log must not disturb the host
			}
			l.dirFD = fd
		}
		if f != nil && size+int64(len(line)) > l.maxBytes {
			f.Close()
			f = l.rotate()
			size = 0
		}
		if f == nil {
			var err error
			if f, size, err = open(l.dirFD, false); err != nil {
				continue
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
	_ = unix.Renameat(l.dirFD, FileName, l.dirFD, FileName+".1")
	if l.rotated != nil {
		l.rotated()
	}
	f, _, err := open(l.dirFD, true)
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
func open(dirFD int, fresh bool) (*os.File, int64, error) {
	flags := unix.O_WRONLY | unix.O_CREAT | unix.O_APPEND | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC
	if fresh {
		flags |= unix.O_EXCL
	}
	fd, err := unix.Openat(dirFD, FileName, flags, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("HA log %s: %w", FileName, err)
	}
	path := FileName
	f := os.NewFile(uintptr(fd), path)
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
