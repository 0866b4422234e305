package cryptoki

import (
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func softhsm(t *testing.T) string {
	t.Helper()
	m, _ := filepath.Glob("/usr/lib/*/softhsm/libsofthsm2.so")
	require.NotEmpty(t, m, "SoftHSM2 is needed (make deps)")
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	require.NoError(t, os.WriteFile(conf, []byte("directories.tokendir = "+dir+"\n"), 0o600))
	t.Setenv("SOFTHSM2_CONF", conf)
	return m[0]
}

func TestOpenErrorsSayWhy(t *testing.T) {
	_, err := Open("")
	assert.ErrorContains(t, err, "no vendor module configured")

	missing := filepath.Join(t.TempDir(), "nosuch.so")
	_, err = Open(missing)
	assert.ErrorContains(t, err, missing)

	notLib := filepath.Join(t.TempDir(), "text.so")
	require.NoError(t, os.WriteFile(notLib, []byte("not a library"), 0o600))
	_, err = Open(notLib)
	assert.ErrorContains(t, err, "cannot load vendor module")
	assert.ErrorContains(t, err, "text.so", "dlerror's reason is kept")
}

// The first Open initializes the module and owns it; a later Open finds it
// initialized and takes no initialization of its own.
func TestOwnershipFollowsWhoInitialized(t *testing.T) {
	path := softhsm(t)
	first, err := Open(path)
	require.NoError(t, err)
	assert.True(t, first.Owner())
	second, err := Open(path)
	require.NoError(t, err)
	assert.False(t, second.Owner(), "module already initialized: no reference taken")
	assert.Error(t, second.Reinitialize(), "not the second's to initialize again")
	slots, err := second.Slots()
	require.NoError(t, err)
	assert.NotEmpty(t, slots, "SoftHSM2 always shows one free slot")
}

// A SIGPIPE raised on the thread during a vendor call is held and drained.
func TestGuardDrainsSIGPIPE(t *testing.T) {
	m := &Module{}
	guard()
	require.NoError(t, syscall.Tgkill(os.Getpid(), syscall.Gettid(), syscall.SIGPIPE))
	m.unguard()
	assert.Equal(t, uint64(1), m.SigpipesDrained())

	// The thread's mask is restored: a guard on an unblocked thread leaves
	// it unblocked, and nothing is drained without a signal.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	guard()
	m.unguard()
	assert.Equal(t, uint64(1), m.SigpipesDrained())
}
