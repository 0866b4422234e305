package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// The tests run hastatus against real SoftHSM2 tokens made in TestMain.
var (
	softhsm string   // the SoftHSM2 module
	serials []string // of tokens m00, m01, m02
	workDir string

	evilSerial string // of a token whose label holds control characters
)

// evilLabel is that token's label: a newline that would forge a table row,
// a terminal escape sequence, C1 CSI (U+009B), DEL, a right-to-left
// override, and a byte that is not UTF-8.
const evilLabel = "ev\nil\x1b[2J\u009b\x7f\u202e\x9bZ"

func TestMain(m *testing.M) {
	os.Exit(func() int {
		var err error
		if workDir, err = os.MkdirTemp("", "hastatus-test"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(workDir)
		if err := makeTokens(); err != nil {
			fmt.Fprintf(os.Stderr, "hastatus tests need SoftHSM2 (make deps): %v\n", err)
			return 1
		}
		return m.Run()
	}())
}

func makeTokens() error {
	matches, _ := filepath.Glob("/usr/lib/*/softhsm/libsofthsm2.so")
	matches2, _ := filepath.Glob("/usr/lib/softhsm/libsofthsm2.so")
	if matches = append(matches, matches2...); len(matches) == 0 {
		return fmt.Errorf("libsofthsm2.so not found")
	}
	softhsm = matches[0]
	tokens := filepath.Join(workDir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return err
	}
	confPath := filepath.Join(workDir, "softhsm2.conf")
	if err := os.WriteFile(confPath, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\n"), 0o600); err != nil {
		return err
	}
	os.Setenv("SOFTHSM2_CONF", confPath)
	for i := 0; i < 3; i++ {
		out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", fmt.Sprintf("m%02d", i),
			"--so-pin", "12345678", "--pin", "1234").CombinedOutput()
		if err != nil {
			return fmt.Errorf("softhsm2-util: %v: %s", err, out)
		}
	}
	if out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", evilLabel,
		"--so-pin", "12345678", "--pin", "1234").CombinedOutput(); err != nil {
		return fmt.Errorf("softhsm2-util: %v: %s", err, out)
	}
	out, err := exec.Command("softhsm2-util", "--show-slots").Output()
	if err != nil {
		return err
	}
	// Each token's "Serial number:" line comes before its "Label:" line.
	byLabel := map[string]string{}
	serial := ""
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "Serial" && f[1] == "number:":
			serial = f[2]
		case len(f) == 2 && f[0] == "Label:":
			byLabel[f[1]] = serial
		}
	}
	if evilSerial = byLabel["ev"]; evilSerial == "" { // the label's first line
		return fmt.Errorf("the token with control characters in its label not found in:\n%s", out)
	}
	for i := 0; i < 3; i++ {
		s, ok := byLabel[fmt.Sprintf("m%02d", i)]
		if !ok {
			return fmt.Errorf("token m%02d not found in:\n%s", i, out)
		}
		serials = append(serials, s)
	}
	return nil
}

// writeConf writes a Chrystoki.conf with the given VirtualToken lines and
// returns its directory.
func writeConf(t *testing.T, module string, groups string, extra string) string {
	t.Helper()
	dir := t.TempDir()
	text := fmt.Sprintf("Chrystoki2 = {\n   LibUNIX64 = %s;\n}\nVirtualToken = {\n%s}\n%s", module, groups, extra)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Chrystoki.conf"), []byte(text), 0o600))
	return dir
}

func group(nn int, label string, serial string, members ...string) string {
	return fmt.Sprintf("   VirtualToken%02dLabel = %s;\n   VirtualToken%02dSN = %s;\n   VirtualToken%02dMembers = %s;\n",
		nn, label, nn, serial, nn, strings.Join(members, ","))
}

func hastatus(t *testing.T, dir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return hastatusCtx(context.Background(), t, dir, args...)
}

func hastatusCtx(ctx context.Context, t *testing.T, dir string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(ctx, args, &out, &errOut, system{
		getenv: func(k string) string {
			if k == "ChrystokiConfigurationPath" {
				return dir
			}
			return ""
		},
		exists: func(p string) bool {
			_, err := os.Stat(p)
			return err == nil
		},
		openModule: cryptoki.Open,
		now:        time.Now,
	})
	return code, out.String(), errOut.String()
}

const missing = "0123456789abcdef" // a serial no token has

func TestHealthyGroupTable(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "payments", "1000001", serials...), "HAConfiguration = {\n statusTimeout = 2;\n}\n")
	code, out, errOut := hastatus(t, dir)
	assert.Equal(t, exitAlive, code, errOut)
	assert.Empty(t, errOut)
	assert.Contains(t, out, "HA Group Label:   payments\nHA Group Number:  1000001\nStatus Timeout:   2s\n")
	for i, s := range serials {
		assert.Regexp(t, fmt.Sprintf(`(?m)^%s\s+m%02d\s+\d+\s+alive\s+\d+\.\d ms$`, s, i), out)
	}
}

func TestJSONSchema(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "payments", "1000001", serials[0], missing), "")
	code, out, _ := hastatus(t, dir, "--json")
	assert.Equal(t, exitSome, code)
	var doc struct {
		Schema int    `json:"schema"`
		Time   string `json:"time"`
		Groups []struct {
			Label    string  `json:"label"`
			Serial   string  `json:"serial"`
			TimeoutS float64 `json:"timeout_s"`
			Members  []struct {
				Serial     string  `json:"serial"`
				SerialDec  string  `json:"serial_dec"`
				Label      string  `json:"label"`
				Slot       *uint   `json:"slot"`
				Status     uint    `json:"status"`
				StatusName string  `json:"status_name"`
				Alive      bool    `json:"alive"`
				Reason     string  `json:"reason"`
				CheckMS    float64 `json:"check_ms"`
			} `json:"members"`
		} `json:"groups"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	assert.Equal(t, 1, doc.Schema)
	_, err := time.Parse(time.RFC3339Nano, doc.Time)
	assert.NoError(t, err)
	require.Len(t, doc.Groups, 1)
	g := doc.Groups[0]
	assert.Equal(t, "payments", g.Label)
	assert.Equal(t, "1000001", g.Serial)
	assert.Equal(t, 3.0, g.TimeoutS)
	require.Len(t, g.Members, 2)
	alive, down := g.Members[0], g.Members[1]
	assert.Equal(t, serials[0], alive.Serial)
	assert.True(t, alive.Alive)
	assert.Equal(t, "CKR_OK", alive.StatusName)
	assert.Equal(t, "m00", alive.Label)
	assert.NotNil(t, alive.Slot)
	assert.Equal(t, missing, down.Serial)
	assert.Equal(t, "81985529216486895", down.SerialDec)
	assert.False(t, down.Alive)
	assert.Equal(t, uint(0xC8410001), down.Status)
	assert.Equal(t, "CKR_HA_NO_INSTANCE", down.StatusName)
	assert.Equal(t, "no instance", down.Reason)
	assert.Nil(t, down.Slot)
}

func TestExitCodes(t *testing.T) {
	dir := writeConf(t, softhsm,
		group(0, "healthy", "1", serials...)+group(1, "half", "2", serials[1], missing)+group(2, "gone", "3", missing),
		"")
	cases := []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--group", "healthy"}, exitAlive, "alive"},
		{[]string{"--group", "half"}, exitSome, "down (no instance)"},
		{[]string{"--group", "3"}, exitAllDown, "HA Group Label:   gone"},
		{nil, exitSome, "HA Group Label:   half"},
	}
	for _, c := range cases {
		code, out, errOut := hastatus(t, dir, c.args...)
		assert.Equal(t, c.code, code, "%v: %s", c.args, errOut)
		assert.Contains(t, out, c.out, "%v", c.args)
	}
	code, out, errOut := hastatus(t, dir, "--group", "nosuch")
	assert.Equal(t, exitAllDown, code)
	assert.Empty(t, out)
	assert.Equal(t, 1, strings.Count(errOut, "\n"))
	assert.Contains(t, errOut, `no HA group "nosuch"`)
}

func TestConfigurationAndModuleErrors(t *testing.T) {
	broken := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(broken, "Chrystoki.conf"), []byte("VirtualToken = {\n"), 0o600))
	noModule := writeConf(t, filepath.Join(t.TempDir(), "nosuch.so"), group(0, "g", "1", serials[0]), "")
	for name, c := range map[string]struct {
		dir  string
		args []string
		want string
	}{
		"no file":        {t.TempDir(), nil, "neither"},
		"broken file":    {broken, nil, "Chrystoki.conf"},
		"missing module": {noModule, nil, "nosuch.so"},
		"bad flag":       {broken, []string{"--frobnicate"}, "frobnicate"},
		"bad watch":      {noModule, []string{"--watch", "1ms"}, "--watch"},
	} {
		code, out, errOut := hastatus(t, c.dir, c.args...)
		assert.Equal(t, exitError, code, name)
		assert.Empty(t, out, name)
		assert.Equal(t, 1, strings.Count(errOut, "\n"), "%s: one line on stderr: %q", name, errOut)
		assert.Contains(t, errOut, c.want, name)
	}
}

func TestTimeoutFlag(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "g", "1", serials[0]), "")
	code, out, errOut := hastatus(t, dir, "--timeout", "99")
	assert.Equal(t, exitAlive, code)
	assert.Contains(t, out, "Status Timeout:   1m0s")
	assert.Contains(t, errOut, "above 1m0s")
	_, out, _ = hastatus(t, dir, "--timeout", "5")
	assert.Contains(t, out, "Status Timeout:   5s")
}

func TestWatchStopsOnInterrupt(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "g", "1", serials[0]), "")
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	code, out, _ := hastatusCtx(ctx, t, dir, "--watch", "100ms")
	assert.Equal(t, exitAlive, code)
	assert.Less(t, time.Since(t0), 3*time.Second)
	assert.Equal(t, 1, strings.Count(out, "HA Group Label"), "the table once, then only changes (none here)")
}

func TestWatchJSONIsOneDocumentPerLine(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "g", "1", serials[0]), "")
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	code, out, _ := hastatusCtx(ctx, t, dir, "--watch", "100ms", "--json")
	assert.Equal(t, exitAlive, code)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 1, "the first state on one line; no changes followed")
	var doc map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &doc))
	assert.Equal(t, 1.0, doc["schema"])
}

func TestHelp(t *testing.T) {
	code, out, errOut := hastatus(t, t.TempDir(), "--help")
	assert.Equal(t, exitAlive, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "usage: hastatus")
}

// unsafeRunes lists what in out a terminal could act on: control
// characters other than newline, DEL, C1 controls, format characters such
// as bidirectional overrides, and bytes that are not UTF-8.
func unsafeRunes(out string) []string {
	var bad []string
	for i, r := range out {
		if r == utf8.RuneError && !strings.HasPrefix(out[i:], "\uFFFD") {
			bad = append(bad, fmt.Sprintf("byte %#x at %d", out[i], i))
		} else if r != '\n' && !unicode.IsPrint(r) {
			bad = append(bad, fmt.Sprintf("%U at %d", r, i))
		}
	}
	return bad
}

func TestLabelsAreEscapedInTheTable(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "pay\x1b[31mments", "1000001", serials[0], evilSerial), "")
	code, out, errOut := hastatus(t, dir)
	assert.Equal(t, exitAlive, code, errOut)
	assert.Empty(t, unsafeRunes(out), "nothing reaches the terminal raw:\n%s", out)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	assert.Len(t, lines, 8, "three header lines, a blank, two heading rows, two members; no forged row:\n%s", out)
	assert.Contains(t, out, `HA Group Label:   pay\x1b[31mments`+"\n")
	assert.Regexp(t, `(?m)^`+evilSerial+`\s+ev\\nil\\x1b\[2J\\u009b\\x7f\\u202e\\x9bZ\s+\d+\s+alive\s`, out)
}

func TestLabelsInJSONAreEscapedAndExact(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "pay\x1b[31m\u0085ments", "1000001", serials[0], evilSerial), "")
	code, out, _ := hastatus(t, dir, "--json")
	assert.Equal(t, exitAlive, code)
	assert.Empty(t, unsafeRunes(out), "nothing reaches the terminal raw:\n%s", out)
	var doc struct {
		Groups []struct {
			Label   string `json:"label"`
			Members []struct {
				Label string `json:"label"`
			} `json:"members"`
		} `json:"groups"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	require.Len(t, doc.Groups, 1)
	assert.Equal(t, "pay\x1b[31m\u0085ments", doc.Groups[0].Label)
	require.Len(t, doc.Groups[0].Members, 2)
	// JSON holds text, not bytes: the byte that is not UTF-8 becomes U+FFFD.
	assert.Equal(t, "ev\nil\x1b[2J\u009b\x7f\u202e\uFFFDZ", doc.Groups[0].Members[1].Label)
}

func TestConfigurationWarningsGoToStderr(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "g", "1", serials[0]), "HAConfiguration = {\n statusTimeout = 0;\n}\n")
	for _, args := range [][]string{nil, {"--json"}} {
		code, out, errOut := hastatus(t, dir, args...)
		assert.Equal(t, exitAlive, code, errOut)
		assert.Equal(t, 1, strings.Count(errOut, "\n"), "one warning: %q", errOut)
		assert.Regexp(t, `^hastatus: warning: .*Chrystoki.conf: HAConfiguration/statusTimeout: .*"0" is below 1 second; using 3s\n$`,
			errOut)
		assert.NotContains(t, out, "warning", "stdout stays clean for parsers")
	}
}

// An HA log directory the library refuses is said by hastatus, where an
// operator checks a configuration.
func TestARefusedHALogDirectoryIsSaid(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "logs")
	require.NoError(t, os.Symlink(real, link))
	for dir, why := range map[string]string{link: "passes through a symbolic link", "relative/logs": "is not an absolute path"} {
		conf := writeConf(t, softhsm, group(0, "g", "1", serials[0]),
			"HAConfiguration = {\n haLogStatus = enabled;\n haLogPath = "+dir+";\n}\n")
		code, _, errOut := hastatus(t, conf)
		assert.Equal(t, exitAlive, code, errOut)
		assert.Contains(t, errOut, why)
		assert.Contains(t, errOut, "the library writes no HA log file")
	}
}

func TestModuleErrorNamesTheKeyThatGaveIt(t *testing.T) {
	dir := t.TempDir()
	text := "Chrystoki2 = {\n   LibUNIX = " + filepath.Join(dir, "nosuch.so") + ";\n}\nVirtualToken = {\n" +
		group(0, "g", "1", serials[0]) + "}\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Chrystoki.conf"), []byte(text), 0o600))
	code, _, errOut := hastatus(t, dir)
	assert.Equal(t, exitError, code)
	assert.Contains(t, errOut, "Chrystoki2/LibUNIX: ")
	assert.NotContains(t, errOut, "LibUNIX64")
}
