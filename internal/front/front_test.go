package front

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// softhsm is Debian's SoftHSM2 module (scripts/deps.sh installs it).
func softhsm(t *testing.T) string {
	for _, p := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("libsofthsm2.so not found: install softhsm2 (scripts/deps.sh)")
	return ""
}

// TestHostLoadsVendorAndRetries: Host fails with the reason while the
// configuration is missing or names no loadable module, and loads the
// vendor once it does, on the next call. The load happens once per
// process, so this is the package's only test that loads a vendor.
func TestHostLoadsVendorAndRetries(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("ChrystokiConfigurationPath", dir)
	t.Setenv("SOFTHSM2_CONF", filepath.Join(dir, "softhsm2.conf"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "softhsm2.conf"),
		[]byte("directories.tokendir = "+dir+"\nobjectstore.backend = file\n"), 0o600))

	_, err := Host()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "neither "+filepath.Join(dir, "Chrystoki.conf"))

	conf := filepath.Join(dir, "Chrystoki.conf")
	require.NoError(t, os.WriteFile(conf, []byte("Chrystoki2 = {\n LibUNIX64 = /nonexistent/vendor.so;\n}\n"), 0o600))
	_, err = Host()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cannot load the vendor module /nonexistent/vendor.so (Chrystoki2/LibUNIX64)")

	vendor := softhsm(t)
	require.NoError(t, os.WriteFile(conf, []byte("[Chrystoki2]\nLibUNIX64=/nonexistent/vendor.so\nLibHAExtVendor="+
		vendor+"\n"), 0o600))
	h, err := Host()
	require.NoError(t, err)
	assert.NotNil(t, h)
	assert.Equal(t, vendor, VendorPath())
	h2, err := Host()
	require.NoError(t, err)
	assert.Equal(t, h, h2, "one struct haext_vendor per process")

	_, ok := Poll()
	assert.False(t, ok, "no event before the host's C_Initialize")
	assert.Equal(t, Stats{}, ReadStats())
}

func TestKindString(t *testing.T) {
	assert.Equal(t, "initialized", Initialized.String())
	assert.Equal(t, "finalized", Finalized.String())
	assert.Equal(t, "host error", HostError.String())
	assert.Equal(t, "overflow", Overflow.String())
	assert.Equal(t, "Kind(9)", Kind(9).String())
}
