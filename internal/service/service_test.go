package service

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/internal/fakep11"
	"github.com/libhaext/libhaext/pkg/cryptoki"
	"github.com/libhaext/libhaext/pkg/probe"
)

// module returns a healthy vendor module: the fake's slot 10 holds token
// 00000000000000a0.
func module() (*cryptoki.Module, error) {
	fakep11.New(1)
	return cryptoki.Attach(fakep11.List())
}

func writeConf(t *testing.T, dir, text string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Chrystoki.conf"), []byte(text), 0o600))
}

const good = "Chrystoki2 = {\n LibUNIX64 = /vendor.so;\n}\nVirtualToken = {\n VirtualToken00Label = g;\n" +
	" VirtualToken00SN = 42;\n VirtualToken00Members = 00000000000000a0;\n}\nHAConfiguration = {\n statusTimeout = 1;\n}\n"

func newService(dir *atomic.Value, open func(string) (*cryptoki.Module, error)) *Service {
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
	s := newService(&dir, func(string) (*cryptoki.Module, error) { return module() })
	r, err := s.State(10, probe.HeadStart{}, nil)
	require.NoError(t, err)
	assert.Equal(t, uint64(42), r.GroupSerial)
	require.Len(t, r.Verdicts, 1)
	assert.Equal(t, probe.StatusOK, r.Verdicts[0].Status)
	_, err = s.State(8, probe.HeadStart{}, nil)
	assert.ErrorIs(t, err, probe.ErrUnknownSlot)
}

func TestConfigurationIsReadAtFirstUseAndFailuresRetriedOncePerSecond(t *testing.T) {
	var dir atomic.Value
	dir.Store(t.TempDir())
	opens := 0
	s := newService(&dir, func(string) (*cryptoki.Module, error) { opens++; return module() })

	_, err := s.State(10, probe.HeadStart{}, nil)
	assert.ErrorContains(t, err, "Chrystoki.conf", "no file yet")
	assert.NotErrorIs(t, err, ErrTransient)

	writeConf(t, dir.Load().(string), good)
	_, err = s.State(10, probe.HeadStart{}, nil)
	assert.Error(t, err, "the failure is remembered for RetryInterval")
	time.Sleep(RetryInterval + 50*time.Millisecond)
	_, err = s.State(10, probe.HeadStart{}, nil)
	assert.NoError(t, err, "read again after RetryInterval")
	assert.Equal(t, 1, opens)

	dir.Store(t.TempDir()) // later changes are not followed: loaded once
	_, err = s.State(10, probe.HeadStart{}, nil)
	assert.NoError(t, err)
}

func TestModuleFailureNamesFileAndKey(t *testing.T) {
	var dir atomic.Value
	dir.Store(t.TempDir())
	writeConf(t, dir.Load().(string), good)
	s := newService(&dir, func(p string) (*cryptoki.Module, error) { return nil, errors.New("cannot load " + p) })
	_, err := s.State(10, probe.HeadStart{}, nil)
	assert.NotErrorIs(t, err, ErrTransient)
	assert.ErrorContains(t, err, "Chrystoki.conf: Chrystoki2/LibUNIX64: cannot load /vendor.so")
}

func TestAHungModuleLoadHoldsNoCallerPastTheTimeout(t *testing.T) {
	var dir atomic.Value
	dir.Store(t.TempDir())
	writeConf(t, dir.Load().(string), good) // statusTimeout = 1
	release := make(chan struct{})
	s := newService(&dir, func(string) (*cryptoki.Module, error) { <-release; return module() })
	t0 := time.Now()
	_, err := s.State(10, probe.HeadStart{}, nil)
	took := time.Since(t0)
	assert.ErrorIs(t, err, ErrTransient)
	assert.ErrorContains(t, err, "still loading")
	assert.Less(t, took, 1500*time.Millisecond)
	assert.GreaterOrEqual(t, took, 900*time.Millisecond)
	close(release)
	require.Eventually(t, func() bool { _, err := s.State(10, probe.HeadStart{}, nil); return err == nil },
		3*time.Second, 50*time.Millisecond, "the load finishes in the background")
}

func TestGroupResolvesWithoutACheck(t *testing.T) {
	var dir atomic.Value
	dir.Store(t.TempDir())
	writeConf(t, dir.Load().(string), good)
	s := newService(&dir, func(string) (*cryptoki.Module, error) { return module() })
	g, err := s.Group(10)
	require.NoError(t, err)
	assert.Equal(t, uint64(42), g)
	_, err = s.Group(8)
	assert.ErrorIs(t, err, probe.ErrUnknownSlot)
	assert.NotErrorIs(t, err, ErrTransient)
}
