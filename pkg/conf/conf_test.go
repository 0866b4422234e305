package conf

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/ini.v1"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return data
}

func ep(network, address string) *Endpoint {
	return &Endpoint{Network: network, Address: address}
}

// wantRealistic is the Config both realistic test files describe, apart
// from File and the file name inside Warnings.
func wantRealistic() *Config {
	return &Config{
		ModulePath: "/usr/safenet/lunaclient/lib/libCryptoki2_64.so",
		ModuleKey:  "Chrystoki2/LibUNIX64",
		Groups: []Group{
			{
				Index:  0,
				Label:  "myHAgroup",
				Serial: 11543713486,
				Members: []Member{
					{Serial: 1543713486, SerialText: "1543713486", Endpoint: ep("tcp", "10.1.2.3:1792")},
					{Serial: 1780166282, SerialText: "1780166282", Endpoint: ep("unix", "/run/hsm/m1.sock")},
				},
			},
			{
				Index:  2,
				Label:  "softhsm pair",
				Serial: 0x1a2b3c4d5e6f7788,
				Members: []Member{
					{Serial: 0x0123456789abcdef, SerialText: "0123456789ABCDEF", Endpoint: ep("tcp", "[fd00::10]:7000")},
					{Serial: 0xfedcba9876543210, SerialText: "fedcba9876543210", Endpoint: ep("tcp", "softhsm-b.example.com:7000")},
				},
			},
		},
		StatusTimeout: 5 * time.Second,
		HALog: HALog{
			Enabled:  true,
			Dir:      "/var/log/luna",
			MaxBytes: 2097152,
			ToStdout: false,
		},
		Warnings: []string{
			"FILE: HAMemberEndpoints/99999: serial 99999 is not a member of any HA group; endpoint ignored",
		},
	}
}

// normalize replaces File and the file name in warnings with "FILE".
func normalize(c *Config) *Config {
	cp := *c
	cp.Warnings = nil
	for _, w := range c.Warnings {
		cp.Warnings = append(cp.Warnings, "FILE"+strings.TrimPrefix(w, c.File))
	}
	cp.File = ""
	return &cp
}

func TestRealisticFiles(t *testing.T) {
	for _, name := range []string{"Chrystoki.conf", "crystoki.ini"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", name)
			c, err := Load(path)
			require.NoError(t, err)
			assert.Equal(t, path, c.File)
			assert.Equal(t, wantRealistic(), normalize(c))

			g, ok := c.GroupBySerial(0x1a2b3c4d5e6f7788)
			require.True(t, ok)
			assert.Equal(t, "softhsm pair", g.Label)
			assert.Same(t, &c.Groups[1], g)
			_, ok = c.GroupBySerial(1543713486) // a member, not a group
			assert.False(t, ok)
		})
	}
}

func TestRealisticFilesAgree(t *testing.T) {
	a, err := Parse("/etc/Chrystoki.conf", readTestdata(t, "Chrystoki.conf"))
	require.NoError(t, err)
	b, err := Parse(`C:\Program Files\SafeNet\LunaClient\crystoki.ini`, readTestdata(t, "crystoki.ini"))
	require.NoError(t, err)
	assert.Equal(t, normalize(a), normalize(b))
}

// minimal returns a valid brace-format file with extra text appended inside
// the given sections (section name -> lines).
func minimal(extra map[string]string) string {
	secs := []struct{ name, body string }{
		{"Chrystoki2", "LibUNIX64 = /lib/p11.so;\n"},
		{"VirtualToken", "VirtualToken00Label = g;\nVirtualToken00SN = 100;\nVirtualToken00Members = 1,2;\n"},
		{"HAConfiguration", ""},
		{"HAMemberEndpoints", ""},
	}
	var b strings.Builder
	for _, s := range secs {
		fmt.Fprintf(&b, "%s = {\n%s%s}\n", s.name, s.body, extra[s.name])
	}
	return b.String()
}

func TestMinimalBraceAndINI(t *testing.T) {
	c, err := Parse("m.conf", []byte(minimal(nil)))
	require.NoError(t, err)
	assert.Equal(t, &Config{
		File:       "m.conf",
		ModulePath: "/lib/p11.so",
		ModuleKey:  "Chrystoki2/LibUNIX64",
		Groups: []Group{{Index: 0, Label: "g", Serial: 100, Members: []Member{
			{Serial: 1, SerialText: "1"}, {Serial: 2, SerialText: "2"},
		}}},
		StatusTimeout: DefaultStatusTimeout,
		HALog:         HALog{MaxBytes: 1 << 20},
	}, c)

	ini := "; comment\n\n[chrystoki2]\nlibunix=/lib/32.so\n[virtualtoken]\nvirtualtoken07sn=ab\nvirtualtoken07members=1\n"
	c, err = Parse("w.ini", []byte(ini))
	require.NoError(t, err)
	assert.Equal(t, "/lib/32.so", c.ModulePath)
	assert.Equal(t, "Chrystoki2/LibUNIX", c.ModuleKey, "the key that gave the path, in its canonical spelling")

	front := "Chrystoki2 = {\n LibUNIX64 = /lib/libhaext-pkcs11.so;\n LibHAExtVendor = /lib/vendor.so;\n}\n" +
		"VirtualToken = {\n VirtualToken00SN = 1;\n VirtualToken00Members = 2;\n}\n"
	fc, err := Parse("f.conf", []byte(front))
	require.NoError(t, err)
	assert.Equal(t, "/lib/vendor.so", fc.ModulePath, "LibHAExtVendor before LibUNIX64 (which names the front)")
	assert.Equal(t, "Chrystoki2/LibHAExtVendor", fc.ModuleKey)
	require.Len(t, c.Groups, 1)
	assert.Equal(t, 7, c.Groups[0].Index)
	assert.Equal(t, uint64(0xab), c.Groups[0].Serial)
	assert.Equal(t, []string{`w.ini: VirtualToken/VirtualToken07Label: group 07 (serial 171) has no label`}, c.Warnings)
}

func TestGroupsSortedByIndex(t *testing.T) {
	data := `Chrystoki2 = {
   LibUNIX = /l.so;
}
VirtualToken = {
   VirtualToken10Members = 5;
   VirtualToken10SN = 10;
   VirtualToken10Label = ten;
   VirtualToken03Label = three;
   VirtualToken03SN = 3;
   VirtualToken03Members = 5;
   VirtualToken99Label = ninety-nine;
   VirtualToken99SN = 99;
   VirtualToken99Members = 5, 6;
   VirtualToken1Label = ignored;
   VirtualToken100Label = ignored;
   VirtualTokenXXLabel = ignored;
}
`
	c, err := Parse("f", []byte(data))
	require.NoError(t, err)
	var idx []int
	for _, g := range c.Groups {
		idx = append(idx, g.Index)
	}
	assert.Equal(t, []int{3, 10, 99}, idx)
	// Indexes of other than two digits are ignored, with a warning (issue
	// 9); keys that are not VirtualTokenNN keys at all are ignored silently.
	assert.Equal(t, []string{
		`f: VirtualToken/VirtualToken1Label: group index "1" is not two digits (NN is 00..99); key ignored`,
		`f: VirtualToken/VirtualToken100Label: group index "100" is not two digits (NN is 00..99); key ignored`,
	}, c.Warnings)
}

func TestBraceSyntaxErrors(t *testing.T) {
	long := "A = {\nk = " + strings.Repeat("x", 64<<10) + ";\n}\n"
	tests := []struct {
		name, data, want string
	}{
		{"entry outside section", "k = v;\n", `f.conf:1: entry "k" outside any section`},
		{"entry after section", "A = {\n}\nk = v;\n", `f.conf:3: entry "k" outside any section`},
		{"nested section", "A = {\n  B = {\n}\n}\n", `f.conf:2: section "B" opened inside section "A" (opened on line 1)`},
		{"close without open", "# c\n}\n", `f.conf:2: '}' without an open section`},
		{"unclosed", "A = {\nk = v;\n\n", `f.conf:3: section "A" (opened on line 1) is not closed`},
		{"garbage line", "A = {\nwhat is this\n}\n", `f.conf:2: expected 'key = value;', 'Section = {' or '}', got "what is this"`},
		{"empty key", "A = {\n = v;\n}\n", `f.conf:2: A: empty key`},
		{"empty section name", "= {\n}\n", `f.conf:1: empty section name`},
		{"long line", long, `f.conf:2: line is longer than 65536 bytes`},
		{"triple quote", "A = {\nk = a\"\"\"b;\n}\n", `f.conf:2: A/k: value contains '"""'`},
		{"dash key", "A = {\n- = v;\n}\n", `f.conf:2: A/-: key "-" cannot be represented`},
		{"unquotable key", "A = {\n[a`b\"c = v;\n}\n", "f.conf:2: A/[a`b\"c: key starts with a quote"},
		{"crlf line numbers", "A = {\r\nk = v;\r\n\r\nx\r\n}\r\n", `f.conf:4: expected`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.conf", []byte(tt.data))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)

			_, err = ToINI([]byte(tt.data))
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "line "), err.Error())
		})
	}
}

func TestSemanticErrors(t *testing.T) {
	vt := func(body string) string {
		return "Chrystoki2 = {\nLibUNIX = /l.so;\n}\nVirtualToken = {\n" + body + "}\n"
	}
	manyMembers := make([]string, MaxMembers+1)
	for i := range manyMembers {
		manyMembers[i] = fmt.Sprint(i + 1)
	}
	tests := []struct {
		name, data, want string
	}{
		{"no module section", "VirtualToken = {\nVirtualToken00SN = 1;\nVirtualToken00Members = 1;\n}\n",
			"f.conf: Chrystoki2: neither LibUNIX64 nor LibUNIX is set"},
		{"no module key", "Chrystoki2 = {\nLibNT = c:\\x.dll;\nLibUNIX64 = ;\n}\n",
			"f.conf: Chrystoki2: neither LibUNIX64 nor LibUNIX is set"},
		{"no groups", vt(""), "f.conf: VirtualToken: no HA groups defined"},
		{"no VirtualToken section", "Chrystoki2 = {\nLibUNIX = /l.so;\n}\n", "f.conf: VirtualToken: no HA groups defined"},
		{"missing SN", vt("VirtualToken01Label = a;\nVirtualToken01Members = 1;\n"),
			"f.conf: VirtualToken/VirtualToken01SN: missing"},
		{"missing members", vt("VirtualToken01Label = a;\nVirtualToken01SN = 1;\n"),
			"f.conf: VirtualToken/VirtualToken01Members: missing"},
		{"label only", vt("VirtualToken05Label = a;\n"), "f.conf: VirtualToken/VirtualToken05SN: missing"},
		{"bad SN", vt("VirtualToken01SN = 0x12;\nVirtualToken01Members = 1;\n"),
			`f.conf: VirtualToken/VirtualToken01SN: serial "0x12": not a decimal or hexadecimal serial`},
		{"bad member", vt("VirtualToken01SN = 1;\nVirtualToken01Members = 1, xyz! ;\n"),
			`f.conf: VirtualToken/VirtualToken01Members: member "xyz!": not a decimal or hexadecimal serial`},
		{"empty member", vt("VirtualToken01SN = 1;\nVirtualToken01Members = 1,,2;\n"),
			`f.conf: VirtualToken/VirtualToken01Members: member 2 of 3 is empty`},
		{"trailing comma", vt("VirtualToken01SN = 1;\nVirtualToken01Members = 1,2,;\n"),
			`f.conf: VirtualToken/VirtualToken01Members: member 3 of 3 is empty`},
		{"empty members", vt("VirtualToken01SN = 1;\nVirtualToken01Members = ;\n"),
			`f.conf: VirtualToken/VirtualToken01Members: member 1 of 1 is empty`},
		{"duplicate member", vt("VirtualToken01SN = 1;\nVirtualToken01Members = 00ab,7,AB;\n"),
			`f.conf: VirtualToken/VirtualToken01Members: member "AB" is listed twice (also as "00ab")`},
		{"too many members", vt("VirtualToken03Label = big;\nVirtualToken03SN = 1;\nVirtualToken03Members = " + strings.Join(manyMembers, ",") + ";\n"),
			`f.conf: VirtualToken/VirtualToken03Members: group "big" has 33 members, at most 32 are supported`},
		{"member overflow", vt("VirtualToken01SN = 1;\nVirtualToken01Members = 18446744073709551616;\n"),
			`f.conf: VirtualToken/VirtualToken01Members: member "18446744073709551616": decimal serial does not fit in 64 bits`},
		{"duplicate group serial", vt("VirtualToken01SN = 1;\nVirtualToken01Members = 1;\nVirtualToken02SN = 01;\nVirtualToken02Members = 2;\n"),
			`f.conf: VirtualToken/VirtualToken02SN: serial 1 is also the serial of group 01`},
		{"endpoint bad serial", minimal(map[string]string{"HAMemberEndpoints": "12g = unix:/x;\n"}),
			`f.conf: HAMemberEndpoints/12g: member serial "12g": not a decimal or hexadecimal serial`},
		{"endpoint bad value", minimal(map[string]string{"HAMemberEndpoints": "1 = udp:x:1;\n"}),
			`f.conf: HAMemberEndpoints/1: endpoint "udp:x:1": unsupported network "udp"`},
		{"endpoint missing port", minimal(map[string]string{"HAMemberEndpoints": "1 = tcp:hsm1;\n"}),
			`f.conf: HAMemberEndpoints/1: endpoint "tcp:hsm1": address hsm1: missing port in address`},
		{"endpoint path too long", minimal(map[string]string{"HAMemberEndpoints": "1 = unix:/" + strings.Repeat("s", 200) + ";\n"}),
			`f.conf: HAMemberEndpoints/1: endpoint "unix:/sss`},
		{"endpoint duplicate serial", minimal(map[string]string{"HAMemberEndpoints": "00ab = unix:/a;\nab = unix:/b;\n"}),
			`f.conf: HAMemberEndpoints/ab: member serial "ab" is also given as "00ab"`},
		{"bad ini", "[Chrystoki2\nLibUNIX=/x\n", "f.conf: reading INI: unclosed section"},
		{"ini line without delimiter", "[Chrystoki2]\nLibUNIX\n", "f.conf: reading INI:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("f.conf", []byte(tt.data))
			require.Error(t, err, "config: %+v", c)
			assert.Nil(t, c)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestMaxMembersAccepted(t *testing.T) {
	members := make([]string, MaxMembers)
	for i := range members {
		members[i] = fmt.Sprintf("%x", 0xabc0+i)
	}
	data := "Chrystoki2 = {\nLibUNIX = /l.so;\n}\nVirtualToken = {\nVirtualToken00Label = g;\nVirtualToken00SN = 1;\nVirtualToken00Members = " +
		strings.Join(members, " , ") + ";\n}\n"
	c, err := Parse("f", []byte(data))
	require.NoError(t, err)
	require.Len(t, c.Groups[0].Members, MaxMembers)
	assert.Equal(t, uint64(0xabc0+31), c.Groups[0].Members[31].Serial)
}

func TestWarnings(t *testing.T) {
	tests := []struct {
		name  string
		extra map[string]string
		want  []string
		check func(t *testing.T, c *Config)
	}{
		{
			name:  "empty label",
			extra: map[string]string{"VirtualToken": "VirtualToken01Label = ;\nVirtualToken01SN = 5;\nVirtualToken01Members = 3;\n"},
			want:  []string{"f.conf: VirtualToken/VirtualToken01Label: group 01 (serial 5) has no label"},
		},
		{
			name:  "missing label",
			extra: map[string]string{"VirtualToken": "VirtualToken01SN = 5;\nVirtualToken01Members = 3;\n"},
			want:  []string{"f.conf: VirtualToken/VirtualToken01Label: group 01 (serial 5) has no label"},
		},
		{
			name:  "status timeout",
			extra: map[string]string{"HAConfiguration": "statusTimeout = 600;\n"},
			want:  []string{`f.conf: HAConfiguration/statusTimeout: timeout "600" is above 1m0s; using 1m0s`},
			check: func(t *testing.T, c *Config) { assert.Equal(t, MaxStatusTimeout, c.StatusTimeout) },
		},
		{
			name:  "logLen not a number",
			extra: map[string]string{"HAConfiguration": "logLen = big;\n"},
			want:  []string{`f.conf: HAConfiguration/logLen: "big" is not a whole number of bytes; using the default of 1048576`},
			check: func(t *testing.T, c *Config) { assert.Equal(t, int64(1<<20), c.HALog.MaxBytes) },
		},
		{
			name:  "logLen negative",
			extra: map[string]string{"HAConfiguration": "logLen = -1;\n"},
			want:  []string{`f.conf: HAConfiguration/logLen: "-1" is negative; using the default of 1048576`},
			check: func(t *testing.T, c *Config) { assert.Equal(t, int64(1<<20), c.HALog.MaxBytes) },
		},
		{
			name:  "logLen zero is the default, silently",
			extra: map[string]string{"HAConfiguration": "logLen = 0;\n"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, int64(1<<20), c.HALog.MaxBytes) },
		},
		{
			name:  "no monitor session",
			extra: map[string]string{"HAConfiguration": "haExtMonitorSession = Disabled;\n"},
			check: func(t *testing.T, c *Config) { assert.True(t, c.NoSession) },
		},
		{
			name:  "monitor session neither enabled nor disabled",
			extra: map[string]string{"HAConfiguration": "haExtMonitorSession = off;\n"},
			want:  []string{`f.conf: HAConfiguration/haExtMonitorSession: "off" is neither enabled nor disabled; using enabled`},
			check: func(t *testing.T, c *Config) { assert.False(t, c.NoSession) },
		},
		{
			name:  "log enabled without path",
			extra: map[string]string{"HAConfiguration": "haLogStatus = ENABLED;\nhaLogToStdout = Enabled;\n"},
			want:  []string{"f.conf: HAConfiguration/haLogPath: haLogStatus is enabled but haLogPath is not set; HA logging to a file is disabled"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, HALog{Enabled: false, ToStdout: true, MaxBytes: 1 << 20}, c.HALog)
			},
		},
		{
			name:  "log status other than enabled",
			extra: map[string]string{"HAConfiguration": "haLogStatus = on;\nhaLogPath = /tmp;\nhaLogToStdout = yes;\n"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, HALog{Dir: "/tmp", MaxBytes: 1 << 20}, c.HALog)
			},
		},
		{
			name: "group index beyond 99",
			extra: map[string]string{"VirtualToken": "VirtualToken100Label = big;\nvirtualtoken100sn = 7;\n" +
				"VirtualToken100Members = 3;\nVirtualToken5SN = 8;\nVirtualToken00Other = x;\n"},
			want: []string{
				`f.conf: VirtualToken/VirtualToken100Label: group index "100" is not two digits (NN is 00..99); key ignored`,
				`f.conf: VirtualToken/VirtualToken100SN: group index "100" is not two digits (NN is 00..99); key ignored`,
				`f.conf: VirtualToken/VirtualToken100Members: group index "100" is not two digits (NN is 00..99); key ignored`,
				`f.conf: VirtualToken/VirtualToken5SN: group index "5" is not two digits (NN is 00..99); key ignored`,
			},
			check: func(t *testing.T, c *Config) {
				require.Len(t, c.Groups, 1)
				assert.Equal(t, 0, c.Groups[0].Index)
			},
		},
		{
			name:  "endpoint for unknown serial",
			extra: map[string]string{"HAMemberEndpoints": "2 = unix:/two;\n0003 = tcp:h:1;\n"},
			want:  []string{"f.conf: HAMemberEndpoints/0003: serial 0003 is not a member of any HA group; endpoint ignored"},
			check: func(t *testing.T, c *Config) {
				assert.Nil(t, c.Groups[0].Members[0].Endpoint)
				assert.Equal(t, ep("unix", "/two"), c.Groups[0].Members[1].Endpoint)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("f.conf", []byte(minimal(tt.extra)))
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.Warnings)
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestEndpointSharedByGroups(t *testing.T) {
	data := minimal(map[string]string{
		"VirtualToken":      "VirtualToken01Label = h;\nVirtualToken01SN = 200;\nVirtualToken01Members = 2,3;\n",
		"HAMemberEndpoints": "2 = tcp:Host:9;\n",
	})
	c, err := Parse("f", []byte(data))
	require.NoError(t, err)
	a, b := c.Groups[0].Members[1].Endpoint, c.Groups[1].Members[0].Endpoint
	assert.Equal(t, ep("tcp", "host:9"), a)
	assert.Equal(t, a, b)
	assert.NotSame(t, a, b, "each member gets its own Endpoint")
}

func TestParseStatusTimeout(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		warn string
	}{
		{"0", 3 * time.Second, `timeout "0" is below 1 second; using 3s`},
		{"1", 1 * time.Second, ""},
		{"60", 60 * time.Second, ""},
		{"61", 60 * time.Second, `timeout "61" is above 1m0s; using 1m0s`},
		{"abc", 3 * time.Second, `timeout "abc" is not a whole number of seconds; using 3s`},
		{"-5", 3 * time.Second, `timeout "-5" is below 1 second; using 3s`},
		{" 7 ", 7 * time.Second, ""},
		{"", 3 * time.Second, `timeout "" is not a whole number of seconds; using 3s`},
		{"2.5", 3 * time.Second, `timeout "2.5" is not a whole number of seconds; using 3s`},
		{"5s", 3 * time.Second, `timeout "5s" is not a whole number of seconds; using 3s`},
		{"99999999999999999999", 60 * time.Second, `timeout "99999999999999999999" is above 1m0s; using 1m0s`},
		{"-99999999999999999999", 3 * time.Second, `timeout "-99999999999999999999" is below 1 second; using 3s`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			d, w := ParseStatusTimeout(tt.in)
			assert.Equal(t, tt.want, d)
			assert.Equal(t, tt.warn, w)
		})
	}
}

func TestStatusTimeoutInFile(t *testing.T) {
	c, err := Parse("f", []byte(minimal(map[string]string{"HAConfiguration": "StatusTimeout =  7 ;\n"})))
	require.NoError(t, err)
	assert.Equal(t, 7*time.Second, c.StatusTimeout)
	assert.Empty(t, c.Warnings)

	c, err = Parse("f", []byte(minimal(map[string]string{"HAConfiguration": "statusTimeout = abc;\n"})))
	require.NoError(t, err)
	assert.Equal(t, DefaultStatusTimeout, c.StatusTimeout)
	assert.Equal(t, []string{`f: HAConfiguration/statusTimeout: timeout "abc" is not a whole number of seconds; using 3s`}, c.Warnings)
}

func TestParseSerial(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr string
	}{
		{in: "1543713486", want: 1543713486},
		{in: "0123456789", want: 123456789},
		{in: " 42 ", want: 42},
		{in: "18446744073709551615", want: 1<<64 - 1},
		{in: "0123456789abcdef", want: 0x0123456789abcdef},
		{in: "0123456789ABCDEF", want: 0x0123456789abcdef},
		{in: "AbCdEf", want: 0xabcdef},
		{in: "ffffffffffffffff", want: 1<<64 - 1},
		{in: "a", want: 10},
		{in: "18446744073709551616", wantErr: "decimal serial does not fit in 64 bits: value out of range"},
		{in: "1ffffffffffffffff", wantErr: "hexadecimal serial does not fit in 64 bits"},
		{in: "", wantErr: "empty serial"},
		{in: "   ", wantErr: "empty serial"},
		{in: "12g", wantErr: "not a decimal or hexadecimal serial"},
		{in: "0x12", wantErr: "not a decimal or hexadecimal serial"},
		{in: "-1", wantErr: "not a decimal or hexadecimal serial"},
		{in: "1 2", wantErr: "not a decimal or hexadecimal serial"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSerial(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		in      string
		want    Endpoint
		str     string
		wantErr string
	}{
		{in: "unix:/run/hsm/m1.sock", want: Endpoint{"unix", "/run/hsm/m1.sock"}, str: "unix:/run/hsm/m1.sock"},
		{in: "unix:/path with spaces:and;colons", want: Endpoint{"unix", "/path with spaces:and;colons"}},
		{in: " UNIX:/x ", want: Endpoint{"unix", "/x"}, str: "unix:/x"},
		{in: "tcp:10.1.2.3:1792", want: Endpoint{"tcp", "10.1.2.3:1792"}, str: "tcp:10.1.2.3:1792"},
		{in: "tcp:HSM-1.Example.com:65535", want: Endpoint{"tcp", "hsm-1.example.com:65535"}, str: "tcp:hsm-1.example.com:65535"},
		{in: "tcp:localhost:1", want: Endpoint{"tcp", "localhost:1"}},
		{in: "tcp:[::1]:5", want: Endpoint{"tcp", "[::1]:5"}, str: "tcp:[::1]:5"},
		{in: "tcp:[FD00:0:0::10]:0080", want: Endpoint{"tcp", "[fd00::10]:80"}, str: "tcp:[fd00::10]:80"},
		{in: "tcp:[fe80::1%eth0]:5", want: Endpoint{"tcp", "[fe80::1%eth0]:5"}},
		{in: "tcp:h:0", wantErr: `port "0" is out of range`},
		{in: "tcp:h:65536", wantErr: `port "65536" is out of range`},
		{in: "tcp:h:+5", wantErr: `port "+5" is not a decimal number`},
		{in: "tcp:h:http", wantErr: `port "http" is not a decimal number`},
		{in: "tcp:h", wantErr: "missing port"},
		{in: "tcp:h:", wantErr: "missing port"},
		{in: "tcp::5", wantErr: "missing host"},
		{in: "tcp:::1:5", wantErr: "too many colons"},
		{in: "tcp:[10.0.0.1]:5", wantErr: "brackets are only for IPv6"},
		{in: "tcp:[host]:5", wantErr: "not a valid IPv6 address"},
		{in: "tcp:bad/host:5", wantErr: "not a valid host name"},
		{in: "udp:x", wantErr: `unsupported network "udp"`},
		{in: "udp:x:5", wantErr: `unsupported network "udp"`},
		{in: "unix:", wantErr: "empty unix socket path"},
		{in: "unix:/" + strings.Repeat("a", 106), want: Endpoint{"unix", "/" + strings.Repeat("a", 106)}},
		{in: "unix:/" + strings.Repeat("a", 107), wantErr: "108 bytes, longer than the 107 a unix socket address holds"},
		{in: "/run/x.sock", wantErr: "want unix:/path or tcp:host:port"},
		{in: "", wantErr: "want unix:/path or tcp:host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseEndpoint(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			if tt.str != "" {
				assert.Equal(t, tt.str, got.String())
			}
			again, err := ParseEndpoint(got.String())
			require.NoError(t, err)
			assert.Equal(t, got, again, "String output parses back to the same endpoint")
		})
	}
}

func TestLocate(t *testing.T) {
	dir := filepath.Join("/opt", "luna")
	conf := filepath.Join(dir, "Chrystoki.conf")
	win := filepath.Join(dir, "crystoki.ini")
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == EnvPath {
				return v
			}
			return ""
		}
	}
	files := func(paths ...string) func(string) bool {
		return func(p string) bool {
			for _, q := range paths {
				if p == q {
					return true
				}
			}
			return false
		}
	}
	tests := []struct {
		name    string
		getenv  func(string) string
		exists  func(string) bool
		want    string
		wantErr []string
	}{
		{"env, both exist", env(dir), files(conf, win, DefaultFile), conf, nil},
		{"env, only ini", env(dir), files(win, DefaultFile), win, nil},
		{"env, neither", env(dir), files(DefaultFile), "", []string{EnvPath, conf, win}},
		{"no env, default", env(""), files(DefaultFile, conf), DefaultFile, nil},
		{"no env, no default", env(""), files(conf), "", []string{DefaultFile, EnvPath}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Locate(tt.getenv, tt.exists)
			if tt.wantErr != nil {
				require.Error(t, err)
				for _, w := range tt.wantErr {
					assert.Contains(t, err.Error(), w)
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()

	t.Run("ok", func(t *testing.T) {
		p := filepath.Join(dir, "Chrystoki.conf")
		require.NoError(t, os.WriteFile(p, []byte(minimal(nil)), 0o600))
		c, err := Load(p)
		require.NoError(t, err)
		assert.Equal(t, p, c.File)
		assert.Equal(t, "/lib/p11.so", c.ModulePath)
	})

	t.Run("missing", func(t *testing.T) {
		p := filepath.Join(dir, "nope.conf")
		_, err := Load(p)
		require.Error(t, err)
		assert.ErrorIs(t, err, os.ErrNotExist)
		assert.Contains(t, err.Error(), p)
	})

	t.Run("directory", func(t *testing.T) {
		_, err := Load(dir)
		require.Error(t, err)
		assert.Contains(t, err.Error(), dir)
		assert.Contains(t, err.Error(), "not a regular file")
	})

	t.Run("exactly 4 MiB", func(t *testing.T) {
		p := filepath.Join(dir, "big-ok.conf")
		require.NoError(t, os.WriteFile(p, padTo([]byte(minimal(nil)), 4<<20), 0o600))
		c, err := Load(p)
		require.NoError(t, err)
		assert.Len(t, c.Groups, 1)
	})

	t.Run("over 4 MiB", func(t *testing.T) {
		p := filepath.Join(dir, "big.conf")
		require.NoError(t, os.WriteFile(p, padTo([]byte(minimal(nil)), 4<<20+1), 0o600))
		_, err := Load(p)
		require.Error(t, err)
		assert.Contains(t, err.Error(), p)
		assert.Contains(t, err.Error(), "larger than the 4 MiB limit")
	})

	t.Run("parse error names the path", func(t *testing.T) {
		p := filepath.Join(dir, "bad.conf")
		require.NoError(t, os.WriteFile(p, []byte("A = {\n"), 0o600))
		_, err := Load(p)
		require.Error(t, err)
		assert.Contains(t, err.Error(), p+":1:")
	})
}

// padTo appends comment lines to data until it is exactly n bytes long.
func padTo(data []byte, n int) []byte {
	var b bytes.Buffer
	b.Write(data)
	line := "# " + strings.Repeat("x", 1000) + "\n"
	for b.Len()+len(line) <= n {
		b.WriteString(line)
	}
	if rest := n - b.Len(); rest > 0 {
		b.WriteString("#" + strings.Repeat("y", rest-1))
	}
	return b.Bytes()
}

func TestFormatDetection(t *testing.T) {
	// Comments and blank lines (and a BOM) before the first section header.
	ini := "\xEF\xBB\xBF\n  # c\n; c\n  [Chrystoki2]\nLibUNIX=/a\n[VirtualToken]\nVirtualToken00SN=1\nVirtualToken00Members=1\nVirtualToken00Label=x\n"
	c, err := Parse("f", []byte(ini))
	require.NoError(t, err)
	assert.Equal(t, "/a", c.ModulePath)

	brace := "\xEF\xBB\xBF// c\r\n" + strings.ReplaceAll(minimal(nil), "\n", "\r\n")
	c, err = Parse("f", []byte(brace))
	require.NoError(t, err)
	assert.Equal(t, "/lib/p11.so", c.ModulePath)
	assert.Empty(t, c.Warnings)
}

func TestINIValuesVerbatim(t *testing.T) {
	// Windows paths ending in '\' and values with '#', ';' and ':' are kept.
	data := "[Chrystoki2]\r\nLibUNIX64=C:\\Program Files\\Luna\\ #;x:y\r\nLibUNIX=/z\r\n[VirtualToken]\r\nVirtualToken00Label=a#b;c\r\nVirtualToken00SN=1\r\nVirtualToken00Members=2\r\n"
	c, err := Parse("f", []byte(data))
	require.NoError(t, err)
	assert.Equal(t, `C:\Program Files\Luna\ #;x:y`, c.ModulePath)
	assert.Equal(t, "a#b;c", c.Groups[0].Label)
}

// loadCaseSensitive reads INI text with Parse's options, but keeping the
// case of names, and returns its (section, key) -> value map, without the
// always-present empty default section.
func loadCaseSensitive(t testing.TB, data []byte) map[[2]string]string {
	t.Helper()
	opts := iniOptions()
	opts.Insensitive = false
	f, err := ini.LoadSources(opts, data)
	require.NoError(t, err, "go-ini must load ToINI output:\n%s", data)
	got := map[[2]string]string{}
	for _, s := range f.Sections() {
		for _, k := range s.Keys() {
			got[[2]string{s.Name(), k.Name()}] = k.Value()
		}
	}
	return got
}

func TestToINI(t *testing.T) {
	in := "\xEF\xBB\xBF" + `# comment
  ; comment
	// comment
Section With Spaces   =   {
   plain = value;
   spaces inside = a  b  c ;
   semis = a;b;;
   hash = #not a comment;
   equals = a=b=c;
   colon = tcp:h:1;
   backslash = C:\dir\;
   nosemi = abc
   empty = ;
   emptynosemi =
   dq = "quoted";
   sq = 'quoted';
   bt = ` + "`tick`" + `;
   leadq = "lead;
   trailq = trail";
   inner = a"b'c` + "`" + `d;
   pct = %(plain)s;
   [bracket = v;
   "dq key = v;
   ` + "`bt key" + ` = v;
   ` + "`bt'both" + ` = v;
   [a` + "`" + `b = v;
   DupKey = 1;
   DupKey = 2;
}
Other = {
}
Section With Spaces = {
   more = 1;
}
`
	out, err := ToINI([]byte(strings.ReplaceAll(in, "\n", "\r\n")))
	require.NoError(t, err)
	sec := "Section With Spaces"
	want := map[[2]string]string{
		{sec, "plain"}:         "value",
		{sec, "spaces inside"}: "a  b  c",
		{sec, "semis"}:         "a;b;",
		{sec, "hash"}:          "#not a comment",
		{sec, "equals"}:        "a=b=c",
		{sec, "colon"}:         "tcp:h:1",
		{sec, "backslash"}:     `C:\dir\`,
		{sec, "nosemi"}:        "abc",
		{sec, "empty"}:         "",
		{sec, "emptynosemi"}:   "",
		{sec, "dq"}:            `"quoted"`,
		{sec, "sq"}:            `'quoted'`,
		{sec, "bt"}:            "`tick`",
		{sec, "leadq"}:         `"lead`,
		{sec, "trailq"}:        `trail"`,
		{sec, "inner"}:         "a\"b'c`d",
		{sec, "pct"}:           "%(plain)s",
		{sec, "[bracket"}:      "v",
		{sec, `"dq key`}:       "v",
		{sec, "`bt key"}:       "v",
		{sec, "`bt'both"}:      "v",
		{sec, "[a`b"}:          "v",
		{sec, "DupKey"}:        "2",
		{sec, "more"}:          "1",
	}
	assert.Equal(t, want, loadCaseSensitive(t, out))
	assert.NotContains(t, string(out), "# comment")
}

func TestToINIEmpty(t *testing.T) {
	for _, in := range []string{"", "\n\n", "# only a comment\n", "\xEF\xBB\xBF"} {
		out, err := ToINI([]byte(in))
		require.NoError(t, err)
		assert.Empty(t, out)
	}
}

func TestINIErrorIsOneLine(t *testing.T) {
	_, err := Parse("w.ini", []byte("[Chrystoki2]\nk=`unterminated\n"))
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "\n")
	assert.True(t, strings.HasPrefix(err.Error(), "w.ini: reading INI: "), err.Error())
}

func TestLineLengthLimit(t *testing.T) {
	line := "k = " + strings.Repeat("x", 64<<10-4)
	require.Len(t, line, 64<<10)
	out, err := ToINI([]byte("A = {\r\n" + line + "\r\n}\r\n"))
	require.NoError(t, err, "a line of exactly 64 KiB (plus CRLF) is accepted")
	assert.Contains(t, string(out), strings.Repeat("x", 64<<10-4))

	_, err = ToINI([]byte("A = {\n" + line + "x\n}\n"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "line 2: line is longer than 65536 bytes")
}
