package conf

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// maxLineLen is the longest line, in bytes and excluding the line ending,
// accepted in a brace-format file.
const maxLineLen = 64 << 10

// utf8BOM is the UTF-8 byte order mark some editors put at the start of a file.
const utf8BOM = "\xEF\xBB\xBF"

// ToINI converts a Linux brace-format Chrystoki.conf to INI text.
//
// The input consists of sections
//
//	Section Name = {
//	   key = value;
//	}
//
// with full-line comments starting with '#', ';' or "//", blank lines, CRLF
// or LF line endings and an optional UTF-8 BOM. Exactly one trailing ';' is
// stripped from each value, together with the white space around it; the
// semicolon is optional. Keys and values are otherwise taken verbatim, and
// the output, read by gopkg.in/ini.v1 with the options Parse uses (but
// case-sensitively), yields exactly the same sections, keys and values; an
// input that cannot be represented that way is rejected. Comments are not
// carried over.
//
// Errors carry the 1-based line number.
func ToINI(data []byte) ([]byte, error) {
	return toINI("", data)
}

// toINI is ToINI with name (may be empty) used to prefix error messages.
func toINI(name string, data []byte) ([]byte, error) {
	data = bytes.TrimPrefix(data, []byte(utf8BOM))
	c := &braceConverter{name: name}
	c.out.Grow(len(data))
	for rest := data; len(rest) > 0; {
		var raw []byte
		raw, rest = nextLine(rest)
		c.lineNo++
		if err := c.convert(raw); err != nil {
			return nil, err
		}
	}
	if c.inSection {
		return nil, c.errorf("section %q (opened on line %d) is not closed with '}'", c.section, c.sectionLine)
	}
	return c.out.Bytes(), nil
}

// nextLine splits data at its first '\n': the line without it, and the rest.
func nextLine(data []byte) (line, rest []byte) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return data[:i], data[i+1:]
	}
	return data, nil
}

// braceConverter converts a brace-format file to INI one line at a time.
type braceConverter struct {
	name        string // for messages; may be empty
	out         bytes.Buffer
	lineNo      int    // of the line being converted, from 1
	inSection   bool   // a section is open
	section     string // the open section's name
	sectionLine int    // the line that opened it
}

// errorf returns an error naming the file and the current line.
func (c *braceConverter) errorf(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if c.name == "" {
		return fmt.Errorf("line %d: %s", c.lineNo, msg)
	}
	return fmt.Errorf("%s:%d: %s", c.name, c.lineNo, msg)
}

// convert converts one line, its '\n' removed.
func (c *braceConverter) convert(raw []byte) error {
	raw = bytes.TrimSuffix(raw, []byte{'\r'})
	if len(raw) > maxLineLen {
		return c.errorf("line is longer than %d bytes", maxLineLen)
	}
	line := strings.TrimSpace(string(raw))
	switch {
	case line == "", isComment(line):
		return nil
	case line == "}":
		if !c.inSection {
			return c.errorf("'}' without an open section")
		}
		c.inSection = false
		return nil
	}
	if name, ok := sectionHead(line); ok {
		return c.openSection(name)
	}
	return c.entry(line)
}

// sectionHead returns the name of a "Name = {" line.
func sectionHead(line string) (string, bool) {
	head, ok := strings.CutSuffix(line, "{")
	if !ok {
		return "", false
	}
	head, ok = strings.CutSuffix(strings.TrimSpace(head), "=")
	return strings.TrimSpace(head), ok
}

// openSection starts section name as an INI section header.
func (c *braceConverter) openSection(name string) error {
	if c.inSection {
		return c.errorf("section %q opened inside section %q (opened on line %d); missing '}'?",
			name, c.section, c.sectionLine)
	}
	if name == "" {
		return c.errorf("empty section name")
	}
	c.inSection, c.section, c.sectionLine = true, name, c.lineNo
	c.out.WriteByte('[')
	c.out.WriteString(name)
	c.out.WriteString("]\n")
	return nil
}

// entry converts a "key = value;" line of the open section.
func (c *braceConverter) entry(line string) error {
	k, v, ok := strings.Cut(line, "=")
	if !ok {
		return c.errorf("expected 'key = value;', 'Section = {' or '}', got %q", truncate(line, 80))
	}
	key := strings.TrimSpace(k)
	if !c.inSection {
		return c.errorf("entry %q outside any section", truncate(key, 80))
	}
	if key == "" {
		return c.errorf("%s: empty key", c.section)
	}
	val := strings.TrimSpace(v)
	if s, ok := strings.CutSuffix(val, ";"); ok {
		val = strings.TrimSpace(s)
	}
	ek, err := encodeINIKey(key)
	if err != nil {
		return c.errorf("%s/%s: %v", c.section, key, err)
	}
	ev, err := encodeINIValue(val)
	if err != nil {
		return c.errorf("%s/%s: %v", c.section, key, err)
	}
	c.out.WriteString(ek)
	c.out.WriteByte('=')
	c.out.WriteString(ev)
	c.out.WriteByte('\n')
	return nil
}

// isComment reports whether a trimmed line is a full-line comment.
func isComment(line string) bool {
	return strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "//")
}

// truncate shortens s for use in an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// encodeINIKey returns key written so that go-ini reads it back unchanged.
// key is non-empty, trimmed, and contains no '=' or newline.
func encodeINIKey(key string) (string, error) {
	if key == "-" {
		// go-ini turns a key named "-" into an auto-numbered key.
		return "", errors.New(`key "-" cannot be represented in INI`)
	}
	switch key[0] {
	case '[', '"', '`':
		// go-ini would read a section header or a quoted key: quote it.
		if !strings.Contains(key, "`") {
			return "`" + key + "`", nil
		}
		if !strings.Contains(key, `"`) {
			return `"` + key + `"`, nil
		}
		return "", errors.New("key starts with a quote or '[' and contains both '\"' and '`'")
	}
	return key, nil
}

// encodeINIValue returns val written so that go-ini reads it back unchanged
// (with IgnoreInlineComment and IgnoreContinuation set).
func encodeINIValue(val string) (string, error) {
	if strings.Contains(val, `"""`) {
		return "", errors.New(`value contains '"""', which cannot be represented in INI`)
	}
	if strings.ContainsAny(val, "\n") {
		return "", errors.New("value contains a newline")
	}
	if val == "" {
		return "", nil
	}
	// go-ini strips surrounding quotes and white space and treats a leading
	// backtick as a quote: wrap such values in its """ quoting, which it
	// returns verbatim.
	first, last := val[0], val[len(val)-1]
	if isQuoteByte(first) || isQuoteByte(last) || strings.TrimSpace(val) != val {
		return `"""` + val + `"""`, nil
	}
	return val, nil
}

func isQuoteByte(c byte) bool {
	return c == '"' || c == '\'' || c == '`'
}
