package conf

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/ini.v1"
)

// fuzzSeeds returns inputs shared by the fuzz targets' seed corpora.
func fuzzSeeds(f *testing.F) [][]byte {
	seeds := [][]byte{
		readTestdata(f, "Chrystoki.conf"),
		readTestdata(f, "crystoki.ini"),
		[]byte(minimal(nil)),
		[]byte(minimal(map[string]string{
			"VirtualToken":      "VirtualToken01Label = ;\nVirtualToken01SN = ab;\nVirtualToken01Members = 1, 00AB ,3;\n",
			"HAConfiguration":   "statusTimeout = 61;\nhaLogStatus = enabled;\nlogLen = -1;\n",
			"HAMemberEndpoints": "1 = tcp:[::1]:5;\n2 = unix:/s;\n9 = tcp:h:1;\n",
		})),
		[]byte("A = {\n k = \"v\";\n `k2 = 'v' ;\n [k3 = `v`;\n e = ;\n}\r\nB={\r\n}\r\n"),
		[]byte("\xEF\xBB\xBFA = {\n k = a \"\"\" b;\n}\n"),
		[]byte("A = {\n k = v;\n"),
		[]byte("}\n"),
		[]byte("\u00a0A\u0085 =\v{\u2028\n\u00a0k\u00a0=\u00a0'v'\u00a0;\u00a0\r\n\u3000}\u3000\n"),
		[]byte("DEFAULT = {\nk = 1;\n}\ndefault = {\nk = 2;\n}\nA.b = {\nk = `;\n}\n"),
		[]byte("[Chrystoki2]\nLibUNIX=/x\n[VirtualToken]\nVirtualToken00SN=1\nVirtualToken00Members=1\n"),
		[]byte("[Chrystoki2]\n\"\"\"\"\"\"\"=1\nk=`a\n\"a\"b\"=1\n-=1\nk=\"\"\"a\n"),
		[]byte("[Chrystoki2]\nLibUNIX=/x\n[VirtualToken]\nVirtualToken00SN=1\nVirtualToken00Members=1\n[HAMemberEndpoints]\n1=tcp:[::1]:1\n"),
		[]byte(minimal(map[string]string{
			"VirtualToken":      "VirtualToken100Label = x;\nVirtualToken7SN = 3;\nVirtualToken001Members = 4;\n",
			"HAMemberEndpoints": "1 = unix:/" + strings.Repeat("p", 106) + ";\n",
		})),
		[]byte(minimal(map[string]string{"HAMemberEndpoints": "2 = unix:/" + strings.Repeat("q", 107) + ";\n"})),
	}
	return seeds
}

// refTriples is a deliberately simple, independent reader of the brace
// format: it returns every (section, key) -> value (the last assignment
// wins) and the set of section names, or an error for input that is not
// well-formed brace syntax. It does not know anything about INI.
func refTriples(data []byte) (map[[2]string]string, map[string]bool, error) {
	text := strings.TrimPrefix(string(data), "\uFEFF")
	values := map[[2]string]string{}
	sections := map[string]bool{}
	current := ""
	open := false
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSuffix(line, "\r")
		if len(line) > 64*1024 {
			return nil, nil, fmt.Errorf("line %d too long", i+1)
		}
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' || strings.HasPrefix(line, "//") {
			continue
		}
		if line == "}" {
			if !open {
				return nil, nil, fmt.Errorf("line %d: stray }", i+1)
			}
			open = false
			continue
		}
		if strings.HasSuffix(line, "{") {
			before := strings.TrimSpace(line[:len(line)-1])
			if strings.HasSuffix(before, "=") {
				name := strings.TrimSpace(before[:len(before)-1])
				if open || name == "" {
					return nil, nil, fmt.Errorf("line %d: bad section", i+1)
				}
				current, open = name, true
				sections[name] = true
				continue
			}
		}
		eq := strings.Index(line, "=")
		if eq < 0 || !open {
			return nil, nil, fmt.Errorf("line %d: bad entry", i+1)
		}
		key := strings.TrimSpace(line[:eq])
		if key == "" {
			return nil, nil, fmt.Errorf("line %d: empty key", i+1)
		}
		val := strings.TrimSpace(line[eq+1:])
		if strings.HasSuffix(val, ";") {
			val = strings.TrimSpace(val[:len(val)-1])
		}
		values[[2]string{current, key}] = val
	}
	if open {
		return nil, nil, errors.New("unclosed section")
	}
	return values, sections, nil
}

func FuzzToINI(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := ToINI(data)
		if err != nil {
			return
		}
		want, wantSecs, refErr := refTriples(data)
		if refErr != nil {
			t.Fatalf("ToINI accepted input the reference reader rejects (%v):\n%q", refErr, data)
		}

		// Read the output with Parse's options, but case-sensitively so
		// that names are compared exactly.
		opts := iniOptions()
		opts.Insensitive = false
		file, err := ini.LoadSources(opts, out)
		if err != nil {
			t.Fatalf("go-ini cannot load ToINI output: %v\ninput: %q\noutput: %q", err, data, out)
		}
		got := map[[2]string]string{}
		gotSecs := map[string]bool{}
		for _, s := range file.Sections() {
			gotSecs[s.Name()] = true
			for _, k := range s.Keys() {
				got[[2]string{s.Name(), k.Name()}] = k.Value()
			}
		}
		wantSecs[ini.DefaultSection] = true // go-ini always has it
		if !equalMaps(got, want) || !equalMaps(gotSecs, wantSecs) {
			t.Fatalf("round trip mismatch\ninput:  %q\noutput: %q\ngot:  %v %v\nwant: %v %v",
				data, out, got, sortedKeys(gotSecs), want, sortedKeys(wantSecs))
		}

		// The insensitive load Parse uses must also accept it.
		if _, err := loadINI(out); err != nil {
			t.Fatalf("loadINI: %v", err)
		}
	})
}

func equalMaps[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]bool) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "fuzz.conf"
		c, err := Parse(name, data)
		if err != nil {
			if c != nil {
				t.Fatalf("Parse returned both a Config and an error: %v", err)
			}
			if !strings.HasPrefix(err.Error(), name) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if c.File != name {
			t.Fatalf("File = %q", c.File)
		}
		if c.ModulePath == "" {
			t.Fatal("empty ModulePath")
		}
		if c.ModuleKey != "Chrystoki2/LibHAExtVendor" && c.ModuleKey != "Chrystoki2/LibUNIX64" && c.ModuleKey != "Chrystoki2/LibUNIX" {
			t.Fatalf("ModuleKey = %q", c.ModuleKey)
		}
		if len(c.Groups) == 0 {
			t.Fatal("no groups")
		}
		if c.StatusTimeout < time.Second || c.StatusTimeout > MaxStatusTimeout {
			t.Fatalf("StatusTimeout %v out of range", c.StatusTimeout)
		}
		if c.HALog.MaxBytes <= 0 {
			t.Fatalf("HALog.MaxBytes = %d", c.HALog.MaxBytes)
		}
		if c.HALog.Enabled && c.HALog.Dir == "" {
			t.Fatal("HA log enabled without a directory")
		}
		serials := map[uint64]bool{}
		for i, g := range c.Groups {
			if n := len(g.Members); n < 1 || n > MaxMembers {
				t.Fatalf("group %d has %d members", g.Index, n)
			}
			if g.Index < 0 || g.Index > 99 || (i > 0 && c.Groups[i-1].Index >= g.Index) {
				t.Fatalf("bad group index order: %d after %v", g.Index, c.Groups[:i])
			}
			if serials[g.Serial] {
				t.Fatalf("duplicate group serial %d", g.Serial)
			}
			serials[g.Serial] = true
			if got, ok := c.GroupBySerial(g.Serial); !ok || got.Index != g.Index {
				t.Fatalf("GroupBySerial(%d) = %v, %v", g.Serial, got, ok)
			}
			members := map[uint64]bool{}
			for _, m := range g.Members {
				if members[m.Serial] {
					t.Fatalf("duplicate member %d in group %d", m.Serial, g.Index)
				}
				members[m.Serial] = true
				if s, err := ParseSerial(m.SerialText); err != nil || s != m.Serial {
					t.Fatalf("member %q parses to %d, %v; want %d", m.SerialText, s, err, m.Serial)
				}
				if m.Endpoint != nil {
					if m.Endpoint.Network == "unix" && len(m.Endpoint.Address) > MaxUnixPath {
						t.Fatalf("unix endpoint of %d bytes accepted", len(m.Endpoint.Address))
					}
					e, err := ParseEndpoint(m.Endpoint.String())
					if err != nil || e != *m.Endpoint {
						t.Fatalf("endpoint %v does not round-trip: %v, %v", *m.Endpoint, e, err)
					}
				}
			}
		}
		for _, w := range c.Warnings {
			if !strings.HasPrefix(w, name+": ") {
				t.Fatalf("warning does not name the file: %q", w)
			}
		}
	})
}
