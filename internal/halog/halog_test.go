package halog

import (
	"golang.org/x/sys/unix"

	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/probe"
)

func transition(old, new probe.Status, first bool) probe.Transition {
	return probe.Transition{
		Time: time.Date(2026, 11, 22, 2, 30, 1, 0, time.UTC), Group: "payments", GroupSerial: 1000001,
		Serial: 0xecea00247ea256ba, Old: old, New: new, First: first,
	}
}

func TestNoSettingsNoLogger(t *testing.T) {
	assert.Nil(t, New(conf.HALog{Dir: t.TempDir()}, os.Stdout))
}

func TestTransitionsAndWarningsGoToTheFile(t *testing.T) {
	dir := t.TempDir()
	l := New(conf.HALog{Enabled: true, Dir: dir, MaxBytes: 1 << 20}, nil)
	require.NotNil(t, l)
	l.Transition(transition(0, probe.StatusOK, true))
	l.Transition(transition(probe.StatusOK, probe.StatusTimeout, false))
	l.Warning("Chrystoki.conf: HAConfiguration/statusTimeout: 99 is above 60; using 60")
	l.Close()

	data, err := os.ReadFile(filepath.Join(dir, FileName))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	require.Len(t, lines, 3)
	assert.Equal(t, `2026-11-22T02:30:01.000Z group="payments" group_serial=1000001 member=17071457494244677306 `+
		`member_hex=ecea00247ea256ba old=none new=CKR_OK reason="alive"`, lines[0])
	assert.Contains(t, lines[1], `old=CKR_OK new=CKR_HA_TIMEOUT reason="timeout"`)
	assert.Contains(t, lines[2], `warning="Chrystoki.conf: HAConfiguration/statusTimeout`)
}

func TestStdoutOnly(t *testing.T) {
	var out bytes.Buffer
	l := New(conf.HALog{ToStdout: true}, &out)
	require.NotNil(t, l)
	assert.Empty(t, l.dir, "no file")
	l.Transition(transition(probe.StatusOK, probe.StatusSocketDown, false))
	l.Close()
	assert.Contains(t, out.String(), `new=CKR_HA_SOCKET_DOWN reason="socket down"`)
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	l := New(conf.HALog{Enabled: true, Dir: dir, MaxBytes: 600}, nil)
	for i := 0; i < 10; i++ {
		l.Transition(transition(probe.StatusOK, 0x30, false))
	}
	l.Close()
	cur, err := os.Stat(filepath.Join(dir, FileName))
	require.NoError(t, err)
	old, err := os.Stat(filepath.Join(dir, FileName+".1"))
	require.NoError(t, err, "the full file was kept as .1")
	assert.LessOrEqual(t, cur.Size(), int64(600))
	assert.LessOrEqual(t, old.Size(), int64(600))
	assert.Positive(t, cur.Size())
}

func TestUnwritableDirectoryIsSilent(t *testing.T) {
	l := New(conf.HALog{Enabled: true, Dir: filepath.Join(t.TempDir(), "missing"), MaxBytes: 1000}, nil)
	l.Transition(transition(probe.StatusOK, 0x30, false))
	l.Close() // no panic, no output
}

func TestAFullQueueDropsAndSaysSo(t *testing.T) {
	var out bytes.Buffer
	l := &Logger{lines: make(chan string, 1), done: make(chan struct{}), stdout: &out}
	l.Warning("one")   // queued
	l.Warning("two")   // dropped: no writer yet
	l.Warning("three") // dropped too
	go l.run()
	time.Sleep(50 * time.Millisecond)
	l.Warning("four") // preceded by the count of dropped lines
	l.Close()
	text := out.String()
	assert.Contains(t, text, `warning="one"`)
	assert.NotContains(t, text, `warning="two"`)
	assert.Contains(t, text, "dropped=2")
	assert.Contains(t, text, `warning="four"`)
}

// logOne writes one transition to a file log in dir and closes the log.
func logOne(t *testing.T, dir string) {
	t.Helper()
	l := New(conf.HALog{Enabled: true, Dir: dir, MaxBytes: 1 << 20}, nil)
	require.NotNil(t, l)
	l.Transition(transition(probe.StatusOK, probe.StatusTimeout, false))
	closeWithin(t, l, 5*time.Second)
}

// closeWithin closes l, failing the test when that takes longer than d
// (the writer is stuck).
func closeWithin(t *testing.T, l *Logger, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { l.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("Close did not return within %v: the writer is stuck", d)
	}
}

func TestASymlinkPlantedInTheLogDirectoryIsNotFollowed(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	victim := filepath.Join(elsewhere, "victim")
	require.NoError(t, os.WriteFile(victim, []byte("precious\n"), 0o600))
	require.NoError(t, os.Symlink(victim, filepath.Join(dir, FileName)))
	logOne(t, dir)
	data, err := os.ReadFile(victim)
	require.NoError(t, err)
	assert.Equal(t, "precious\n", string(data), "the link's target is untouched")
	st, err := os.Lstat(filepath.Join(dir, FileName))
	require.NoError(t, err)
	assert.Equal(t, os.ModeSymlink, st.Mode().Type(), "the link is left as it was")
}

// A directory reached through a symbolic link anywhere on the way, or a
// relative path, is refused with a clear reason, and nothing is written
// where the link points.
func TestASymlinkedOrRelativeDirectoryIsRefused(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real", "logs")
	require.NoError(t, os.MkdirAll(real, 0o700))
	require.NoError(t, os.Symlink(filepath.Join(base, "real"), filepath.Join(base, "via")))
	require.NoError(t, os.Symlink(real, filepath.Join(base, "direct")))

	for _, dir := range []string{filepath.Join(base, "via", "logs"), filepath.Join(base, "direct")} {
		err := CheckDir(dir)
		require.Error(t, err, dir)
		assert.Contains(t, err.Error(), "passes through a symbolic link")

		var out bytes.Buffer
		l := New(conf.HALog{Enabled: true, ToStdout: true, Dir: dir, MaxBytes: 1000}, &out)
		l.Transition(transition(probe.StatusOK, probe.StatusSocketDown, false))
		l.Close()
		assert.Contains(t, out.String(), "passes through a symbolic link", "said on standard output")
		assert.Contains(t, out.String(), "HA logging to a file is disabled")
		_, err = os.Stat(filepath.Join(real, FileName))
		assert.True(t, os.IsNotExist(err), "nothing written through %s", dir)
	}

	err := CheckDir("logs/ha")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is not an absolute path")
	assert.NoError(t, CheckDir(real))
	assert.NoError(t, CheckDir(filepath.Join(real, "not-yet")), "a directory made later is fine")

	// The fallback for kernels without openat2 refuses the same links.
	_, err = openDirWalk(filepath.Join(base, "via", "logs"))
	assert.ErrorIs(t, err, unix.ELOOP)
	fd, err := openDirWalk(real)
	require.NoError(t, err)
	unix.Close(fd)
}

func TestAHardLinkOrAFIFOIsRefused(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	victim := filepath.Join(elsewhere, "victim")
	require.NoError(t, os.WriteFile(victim, []byte("precious\n"), 0o600))
	require.NoError(t, os.Link(victim, filepath.Join(dir, FileName)))
	logOne(t, dir)
	data, err := os.ReadFile(victim)
	require.NoError(t, err)
	assert.Equal(t, "precious\n", string(data), "a file with another link is not written")

	fifoDir := t.TempDir()
	require.NoError(t, syscall.Mkfifo(filepath.Join(fifoDir, FileName), 0o600))
	logOne(t, fifoDir) // must neither block on the FIFO nor write to it
}

func TestAFileOfAnotherUserIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	require.NoError(t, os.WriteFile(path, []byte("planted\n"), 0o666))
	require.NoError(t, os.Chown(path, 65534, 65534))
	logOne(t, dir)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "planted\n", string(data))
}

func TestFilesAreCreatedWithMode0600(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	dir := t.TempDir()
	l := New(conf.HALog{Enabled: true, Dir: dir, MaxBytes: 600}, nil)
	for i := 0; i < 10; i++ {
		l.Transition(transition(probe.StatusOK, 0x30, false))
	}
	l.Close()
	for _, name := range []string{FileName, FileName + ".1"} {
		st, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), name)
	}
}

func TestRotationCreatesAFreshFile(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	victim := filepath.Join(elsewhere, "victim")
	require.NoError(t, os.WriteFile(victim, []byte("precious\n"), 0o600))
	l := New(conf.HALog{Enabled: true, Dir: dir, MaxBytes: 600}, nil)
	var plants int
	l.rotated = func() { // an attacker quick enough to plant a link between rename and open
		if os.Symlink(victim, filepath.Join(dir, FileName)) == nil {
			plants++
		}
	}
	for i := 0; i < 10; i++ {
		l.Transition(transition(probe.StatusOK, 0x30, false))
	}
	l.Close()
	require.Positive(t, plants)
	data, err := os.ReadFile(victim)
	require.NoError(t, err)
	assert.Equal(t, "precious\n", string(data))
}

// TestStdoutToABrokenPipe runs a child whose standard output is a pipe
// nobody reads and whose HA log goes to os.Stdout: the child must survive
// its writes.
func TestStdoutToABrokenPipe(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	r.Close()
	var stderr bytes.Buffer
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "HALOG_TEST_CHILD=1")
	cmd.Stdout, cmd.Stderr = w, &stderr
	err = cmd.Run()
	w.Close()
	assert.NoError(t, err, "the child survives (stderr: %s)", &stderr)
	assert.Equal(t, "wrote 3 lines\n", stderr.String())
}

// TestMain runs the tests, or the child of TestStdoutToABrokenPipe.
func TestMain(m *testing.M) {
	if os.Getenv("HALOG_TEST_CHILD") != "" {
		l := New(conf.HALog{ToStdout: true}, os.Stdout)
		for i := 0; i < 3; i++ {
			l.Warning("a line nobody reads")
		}
		l.Close()
		fmt.Fprintln(os.Stderr, "wrote 3 lines")
		os.Exit(0)
	}
	os.Exit(m.Run())
}
