package halog

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
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
	assert.Empty(t, l.Path())
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
