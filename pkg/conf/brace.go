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
	var out bytes.Buffer
	out.Grow(len(data))

	lineErr := func(n int, format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		if name == "" {
			return fmt.Errorf("line %d: %s", n, msg)
		}
		return fmt.Errorf("%s:%d: %s", name, n, msg)
	}

	var (
		inSection   bool
		sectionName string
		sectionLine int
		lineNo      int
	)
	for rest := data; len(rest) > 0; {
		var raw []byte
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			raw, rest = rest[:i], rest[i+1:]
		} else {
			raw, rest = rest, nil
		}
		lineNo++
		raw = bytes.TrimSuffix(raw, []byte{'\r'})
		if len(raw) > maxLineLen {
			return nil, lineErr(lineNo, "line is longer than %d bytes", maxLineLen)
		}
		line := strings.TrimSpace(string(raw))

		switch {
		case line == "", isComment(line):
			continue

		case line == "}":
			if !inSection {
				return nil, lineErr(lineNo, "'}' without an open section")
			}
			inSection = false
			continue
		}

		if head, ok := strings.CutSuffix(line, "{"); ok {
			if head, ok := strings.CutSuffix(strings.TrimSpace(head), "="); ok {
				secName := strings.TrimSpace(head)
				if inSection {
					return nil, lineErr(lineNo, "section %q opened inside section %q (opened on line %d); missing '}'?",
						secName, sectionName, sectionLine)
				}
				if secName == "" {
					return nil, lineErr(lineNo, "empty section name")
				}
				inSection, sectionName, sectionLine = true, secName, lineNo
				out.WriteByte('[')
				out.WriteString(secName)
				out.WriteString("]\n")
				continue
			}
		}

		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, lineErr(lineNo, "expected 'key = value;', 'Section = {' or '}', got %q", truncate(line, 80))
		}
		key := strings.TrimSpace(k)
		if !inSection {
			return nil, lineErr(lineNo, "entry %q outside any section", truncate(key, 80))
		}
		if key == "" {
			return nil, lineErr(lineNo, "%s: empty key", sectionName)
		}
		val := strings.TrimSpace(v)
		if s, ok := strings.CutSuffix(val, ";"); ok {
			val = strings.TrimSpace(s)
		}
		ek, err := encodeINIKey(key)
		if err != nil {
			return nil, lineErr(lineNo, "%s/%s: %v", sectionName, key, err)
		}
		ev, err := encodeINIValue(val)
		if err != nil {
			return nil, lineErr(lineNo, "%s/%s: %v", sectionName, key, err)
		}
		out.WriteString(ek)
		out.WriteByte('=')
		out.WriteString(ev)
		out.WriteByte('\n')
	}
	if inSection {
		return nil, lineErr(lineNo, "section %q (opened on line %d) is not closed with '}'", sectionName, sectionLine)
	}
	return out.Bytes(), nil
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
