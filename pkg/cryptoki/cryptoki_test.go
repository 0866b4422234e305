package cryptoki

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/libhaext/libhaext/internal/fakep11"
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

// buildModule compiles a one-function PKCS#11 module.
func buildModule(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	src, lib := filepath.Join(dir, "m.c"), filepath.Join(dir, "m.so")
	require.NoError(t, os.WriteFile(src, []byte("#include <p11-kit/pkcs11.h>\n"+body), 0o600))
	cflags, err := exec.Command("pkg-config", "--cflags", "p11-kit-1").Output()
	require.NoError(t, err)
	out, err := exec.Command("sh", "-c", "cc -shared -fPIC "+strings.TrimSpace(string(cflags))+" -o "+lib+" "+src).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return lib
}

// A module that cannot start is an error with the reason, never a crash
// (issue 9, item 3).
func TestModuleThatCannotStart(t *testing.T) {
	failing := buildModule(t, "CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR p) { (void)p; return CKR_HOST_MEMORY; }\n")
	_, err := Open(failing)
	require.Error(t, err)
	assert.ErrorContains(t, err, "C_GetFunctionList: CKR_HOST_MEMORY")
	assert.Equal(t, uint(0x2), RV(err))

	null := buildModule(t, "CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR p) { *p = 0; return CKR_OK; }\n")
	_, err = Open(null)
	assert.ErrorContains(t, err, "no function list")

	none := buildModule(t, "int not_pkcs11(void) { return 0; }\n")
	_, err = Open(none)
	assert.ErrorContains(t, err, "no C_GetFunctionList")
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
	assert.Error(t, second.Restart(), "nor to finalize")
	slots, err := second.Slots()
	require.NoError(t, err)
	assert.NotEmpty(t, slots, "SoftHSM2 always shows one free slot")
	serial, _, err := second.Token(slots[0])
	require.NoError(t, err)
	assert.Empty(t, serial, "the free slot's token has no serial yet")
}

// A SIGPIPE raised on the thread during a vendor call is held and taken,
// and the thread's signal mask is as it was.
func TestVendorCallDrainsSIGPIPE(t *testing.T) {
	f := fakep11.New(1)
	m, err := Attach(fakep11.List())
	require.NoError(t, err)
	h, err := m.OpenSession(10)
	require.NoError(t, err)
	f.Update(10, func(s *fakep11.Script) { s.Sigpipe = true })

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after unix.Sigset_t
	require.NoError(t, unix.PthreadSigmask(unix.SIG_SETMASK, nil, &before))
	taken := sigpipesTaken()
	require.NoError(t, m.SessionInfo(h), "the process survives the SIGPIPE")
	assert.Equal(t, taken+1, sigpipesTaken())
	require.NoError(t, unix.PthreadSigmask(unix.SIG_SETMASK, nil, &after))
	assert.Equal(t, before, after, "the thread's mask is restored")
}
