package service

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/pkg/probe"
)

// module is a minimal healthy vendor module: slot 7 holds token "00aa".
type module struct{}

func (module) Slots() ([]uint, error) { return []uint{7}, nil }
func (module) Token(slot uint) (string, string, error) {
	if slot != 7 {
		return "", "", probe.Error(0x3)
	}
	return "00aa", "m00", nil
}
func (module) OpenSession(uint) (uint, error) { return 1, nil }
func (module) CloseSession(uint) error        { return nil }
func (module) SessionInfo(uint) error         { return nil }
func (module) Reinitialize() error            { return nil }

func writeConf(t *testing.T, dir, text string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Chrystoki.conf"), []byte(text), 0o600))
}

const good = "Chrystoki2 = {\n LibUNIX64 = /vendor.so;\n}\nVirtualToken = {\n VirtualToken00Label = g;\n" +
	" VirtualToken00SN = 42;\n VirtualToken00Members = 00aa;\n}\nHAConfiguration = {\n statusTimeout = 1;\n}\n"

func newService(dir *atomic.Value, open func(string) (probe.Module, error)) *Service {
	return New(Env{
		Getenv: func(k string) string {
			if k == "ChrystokiConfigurationPath" {
				return dir.Load().(string)
			}
			return ""
		},
		Exists:     func(p string) bool { _, err := os.Stat(p); return err == nil },
		OpenModule: open,
	})
}

func TestReportAndSlotErrors(t *testing.T) {
	var dir atomic.Value
	dir.Store(t.TempDir())
	writeConf(t, dir.Load().(string), good)
	s := newService(&dir, func(string) (probe.Module, error) { return module{}, nil })
	serial, vs, rv := s.State(7, nil)
	assert.Equal(t, RVOK, rv)
	assert.Equal(t, uint64(42), serial)
	require.Len(t, vs, 1)
	assert.Equal(t, probe.StatusOK, vs[0].Status)
	_, _, rv = s.State(8, nil)
	assert.Equal(t, RVSlotIDInvalid, rv)
}

func TestConfigurationIsReadAtFirstUseAndFailuresRetriedOncePerSecond(t *testing.T) {
	var dir atomic.Value
	dir.Store(t.TempDir())
	opens := 0
	s := newService(&dir, func(string) (probe.Module, error) { opens++; return module{}, nil })

	_, _, rv := s.State(7, nil)
	assert.Equal(t, RVGeneralError, rv, "no file yet")
	assert.Contains(t, s.LastError(), "Chrystoki.conf")

	writeConf(t, dir.Load().(string), good)
	_, _, rv = s.State(7, nil)
	assert.Equal(t, RVGeneralError, rv, "the failure is remembered for RetryInterval")
	time.Sleep(RetryInterval + 50*time.Millisecond)
	_, _, rv = s.State(7, nil)
	assert.Equal(t, RVOK, rv, "read again after RetryInterval")
	assert.Equal(t, 1, opens)

	dir.Store(t.TempDir()) // later changes are not followed: loaded once
	_, _, rv = s.State(7, nil)
	assert.Equal(t, RVOK, rv)
}

func TestModuleFailureNamesFileAndKey(t *testing.T) {
	var dir atomic.Value
	dir.Store(t.TempDir())
	writeConf(t, dir.Load().(string), good)
	s := newService(&dir, func(p string) (probe.Module, error) { return nil, errors.New("cannot load " + p) })
	_, _, rv := s.State(7, nil)
	assert.Equal(t, RVGeneralError, rv)
	assert.Contains(t, s.LastError(), "Chrystoki.conf: Chrystoki2/LibUNIX64: cannot load /vendor.so")
}

func TestAHungModuleLoadHoldsNoCallerPastTheTimeout(t *testing.T) {
	var dir atomic.Value
	dir.Store(t.TempDir())
	writeConf(t, dir.Load().(string), good) // statusTimeout = 1
	release := make(chan struct{})
	s := newService(&dir, func(string) (probe.Module, error) { <-release; return module{}, nil })
	t0 := time.Now()
	_, _, rv := s.State(7, nil)
	took := time.Since(t0)
	assert.Equal(t, RVFunctionFailed, rv)
	assert.True(t, strings.Contains(s.LastError(), "still loading"), s.LastError())
	assert.Less(t, took, 1500*time.Millisecond)
	assert.GreaterOrEqual(t, took, 900*time.Millisecond)
	close(release)
	require.Eventually(t, func() bool { _, _, rv := s.State(7, nil); return rv == RVOK },
		3*time.Second, 50*time.Millisecond, "the load finishes in the background")
}

func TestRaiseProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(2)
	RaiseProcs(func(string) string { return "" }, 40)
	assert.Equal(t, 40, runtime.GOMAXPROCS(0))
	RaiseProcs(func(string) string { return "" }, 10)
	assert.Equal(t, 40, runtime.GOMAXPROCS(0), "never lowered")
	runtime.GOMAXPROCS(2)
	RaiseProcs(func(k string) string {
		if k == "GOMAXPROCS" {
			return "2"
		}
		return ""
	}, 40)
	assert.Equal(t, 2, runtime.GOMAXPROCS(0), "the operator's choice stands")
}
