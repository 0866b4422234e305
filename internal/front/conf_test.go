package front

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/ini.v1"

	"github.com/libhaext/libhaext/pkg/conf"
)

// A valid group, appended to every input so that pkg/conf's Parse gets as
// far as it can (it rejects a file without groups).
const (
	braceGroup = "\nVirtualToken = {\nVirtualToken99Label = x;\nVirtualToken99SN = 99;\nVirtualToken99Members = 1;\n}\n"
	iniGroup   = "\n[VirtualToken]\nVirtualToken99Label=x\nVirtualToken99SN=99\nVirtualToken99Members=1\n"
)

// goINIVendor reads Chrystoki2/LibHAExtVendor the way pkg/conf reads its
// keys (brace format through conf.ToINI, then go-ini with pkg/conf's
// options), for the key pkg/conf does not know.
func goINIVendor(data []byte) (string, bool) {
	data = bytes.TrimPrefix(data, []byte("\xEF\xBB\xBF"))
	if !looksLikeINI(data) {
		var err error
		if data, err = conf.ToINI(data); err != nil {
			return "", false
		}
	}
	f, err := ini.LoadSources(ini.LoadOptions{
		Insensitive: true, KeyValueDelimiters: "=", IgnoreInlineComment: true, IgnoreContinuation: true,
	}, data)
	if err != nil {
		return "", false
	}
	s, err := f.GetSection("Chrystoki2")
	if err != nil || !s.HasKey("LibHAExtVendor") {
		return "", true
	}
	return strings.TrimSpace(s.Key("LibHAExtVendor").Value()), true
}

func looksLikeINI(data []byte) bool {
	for _, line := range strings.Split(string(data), "\n") {
		s := strings.TrimSpace(line)
		if s == "" || strings.HasPrefix(s, "#") || strings.HasPrefix(s, ";") || strings.HasPrefix(s, "//") {
			continue
		}
		return s[0] == '['
	}
	return false
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// compare checks the C reader against pkg/conf (LibHAExtVendor, else
// LibUNIX64, else LibUNIX) and against go-ini (LibHAExtVendor) on data with a group appended in
// either format. It returns how many of the two inputs pkg/conf accepted.
func compare(t *testing.T, data []byte) int {
	t.Helper()
	n := 0
	for _, tail := range []string{braceGroup, iniGroup} {
		in := append(append([]byte{}, data...), tail...)
		got := ParseConf(in)
		cfg, err := conf.Parse("fuzz.conf", in)
		if err != nil && strings.Contains(err.Error(), "no PKCS#11 module to load") && got.Module() != "" {
			t.Fatalf("input %q: the C reader finds module %q where pkg/conf finds none", in, got.Module())
		}
		if err == nil {
			n++
			compareGroups(t, in, cfg)
			if got.Module() != cfg.ModulePath {
				t.Fatalf("input %q: the C reader finds module %q, pkg/conf %q (%s)", in, got.Module(),
					cfg.ModulePath, cfg.ModuleKey)
			}
		}
		if v, ok := goINIVendor(in); ok && err == nil && str(got.Vendor) != v {
			t.Fatalf("input %q: the C reader finds LibHAExtVendor %q, go-ini %q", in, str(got.Vendor), v)
		}
	}
	return n
}

// compareGroups checks the HA slot's C reader (haconf.c) against the
// groups pkg/conf accepted: the same groups, labels (the C reader keeps 32
// bytes, a token label's room, up to a NUL byte), serials and members.
func compareGroups(t *testing.T, in []byte, cfg *conf.Config) {
	t.Helper()
	got := ParseHAGroups(in)
	if len(got) != len(cfg.Groups) {
		t.Fatalf("input %q: the HA slot's reader finds %d groups, pkg/conf %d", in, len(got), len(cfg.Groups))
	}
	byNN := map[int]HAGroup{}
	for _, g := range got {
		byNN[g.NN] = g
	}
	for _, g := range cfg.Groups {
		c, ok := byNN[g.Index]
		label := g.Label
		if len(label) > 32 {
			label = label[:32]
		}
		if i := strings.IndexByte(label, 0); i >= 0 {
			label = label[:i] // the C reader's strings end at a NUL byte
		}
		serial, err := conf.ParseSerial(c.Serial)
		members := make([]uint64, 0, len(g.Members))
		for _, m := range g.Members {
			members = append(members, m.Serial)
		}
		if !ok || c.Label != label || err != nil || serial != g.Serial || !assert.ObjectsAreEqual(members, c.Members) {
			t.Fatalf("input %q: group %02d: the HA slot's reader has %+v, pkg/conf %+v", in, g.Index, c, g)
		}
	}
}

func seeds(t testing.TB) [][]byte {
	out := [][]byte{
		[]byte("Chrystoki2 = {\n   LibUNIX64 = /lib/a.so;\n}\n"),
		[]byte("Chrystoki2 = {\n   LibUNIX = /lib/32.so;\n   LibUNIX64 = ;\n}\n"),
		[]byte("Chrystoki2 = {\n   LibUNIX64 = /a;\n   LibHAExtVendor = /v;\n}\n"),
		[]byte("chrystoki2 = {\r\n   libunix64 = \"/q u o t e d\" ;\r\n}\r\n"),
		[]byte("\xEF\xBB\xBF\xEF\xBB\xBFChrystoki2 = {\nLibUNIX64 = /bom;\n}\n"),
		[]byte("Chrystoki2={\nLibUNIX64=/a;\nLibUNIX64=/b;;\n}\n# c\n// c\n; c\nChrystoki2 = {\nLIBUNIX64 = /c ; \n}\n"),
		[]byte("CHRYSTO\u212aI2 = {\n L\u0130BUN\u0130X64 = /kelvin;\n}\n"),
		[]byte("\u00a0Chrystoki2\u0085 =\v{\u2028\n\u00a0LibUNIX64\u00a0=\u00a0/nbsp\u3000;\u00a0\r\n\u3000}\u3000\n"),
		[]byte("Chrystoki2 = {\nLibUNIX64 = `/tick`;\nLibUNIX = 'x';\n}\n"),
		[]byte("Other = {\nLibUNIX64 = /no;\n}\nChrystoki2 = {\nLibUNIX = /yes;\n}\n"),
		[]byte("[Chrystoki2]\nLibUNIX64=/ini\n"),
		[]byte("\xFE\xFF[Chrystoki2]\nLibUNIX64=/ini\n"),
		[]byte("; c\n[chrystoki2]\nlibunix64 = \"/dq\"\nlibunix='/sq'\n"),
		[]byte("[Chrystoki2]\nLibUNIX64=\"\"\"/tri\nple\"\"\"\n"),
		[]byte("[Chrystoki2]\nLibUNIX64=`/multi\nline` tail\n"),
		[]byte("[Chrystoki2]\nLibUNIX64=\"\"\"unterminated\n"),
		[]byte("[Chrystoki2]\n\"LibUNIX64\" = /quoted-key\n`LibUNIX`=/bt\n\"\"\"LibHAExtVendor\"\"\"=/v\n"),
		[]byte("[ Chrystoki2 ]\nLibUNIX64=/spaced-section\n[Chrystoki2]] x\nLibUNIX=/y\n"),
		[]byte("[Chrystoki2]\n  LibUNIX64 = /a\n[Other]\nLibUNIX64=/b\n[CHRYSTOKI2]\nLibUNIX64 =\n"),
		[]byte("[Chrystoki2]\nLibUNIX64 = /a ; not a comment # either\n-=1\n"),
		[]byte("[Chrystoki2]\r\nLibUNIX64=/crlf\r\nLibHAExtVendor=  /vendor  \r\n"),
		[]byte("LibUNIX64 = {\n}\nChrystoki2 = {\nk = v {\nLibUNIX64 = /x {\n}\n"),
		[]byte("Chrystoki2 = {\nLibUNIX64 = /a;\n}\nVirtualToken = {\nVirtualToken03Label = three;\nVirtualToken03SN = 3;\n" +
			"VirtualToken03Members = 0c58c16bfd2afe6f, 123 ,abc;\nVirtualToken03LibHAExtStandby = 123;\n}\n" +
			"HAConfiguration = {\nHAOnly = 1;\nLibHAExtKeepPIN = 0;\n}\n"),
		[]byte("[Chrystoki2]\nLibUNIX64=/a\n[VirtualToken]\nvirtualtoken07label = a label longer than thirty-two bytes\n" +
			"VIRTUALTOKEN07SN=7\nVirtualToken07Members=1,2,3\n"),
	}
	for _, name := range []string{"Chrystoki.conf", "crystoki.ini"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "pkg", "conf", "testdata", name))
		require.NoError(t, err)
		out = append(out, b)
	}
	return out
}

func TestConfReaderMatchesPkgConf(t *testing.T) {
	accepted := 0
	for _, s := range seeds(t) {
		if compare(t, s) > 0 {
			accepted++
		} else {
			t.Logf("pkg/conf rejects %q", s)
		}
	}
	// Most seeds must get through pkg/conf, or the comparison proves little.
	assert.GreaterOrEqual(t, accepted, 20)
}

func TestConfModulePrecedence(t *testing.T) {
	cases := []struct{ in, want string }{
		{"Chrystoki2 = {\nLibUNIX = /32;\n}\n", "/32"},
		{"Chrystoki2 = {\nLibUNIX = /32;\nLibUNIX64 = /64;\n}\n", "/64"},
		{"Chrystoki2 = {\nLibUNIX64 = /front.so;\nLibHAExtVendor = /vendor.so;\n}\n", "/vendor.so"},
		{"Chrystoki2 = {\nLibHAExtVendor = ;\nLibUNIX64 = /64;\n}\n", "/64"},
		{"[chrystoki2]\nlibhaextvendor = /v\nlibunix64=/64\n", "/v"},
		{"Chrystoki2 = {\n}\n", ""},
		{"Other = {\nLibHAExtVendor = /v;\n}\n", ""},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, ParseConf([]byte(c.in)).Module(), "%q", c.in)
	}
}

func FuzzConfReader(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		compare(t, data)
	})
}
