package main

import (
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Token labels come from the tokens and group labels from the file: either
// may hold bytes that a terminal acts on. hastatus prints them escaped, in
// both outputs, so that a label can neither forge a table row nor send an
// escape sequence to the terminal.

// shownAsIs reports whether a rune is printed as it is: a printable
// character by strconv.IsPrint (letters, marks, numbers, punctuation,
// symbols and the ASCII space), other than the backslash that starts an
// escape. Control characters (C0, DEL, C1), format characters such as
// bidirectional overrides, and other spaces are escaped.
func shownAsIs(r rune) bool {
	return r != '\\' && strconv.IsPrint(r)
}

// printable returns s for a terminal: every rune that is not shownAsIs is
// written as Go writes it in a quoted string (\n, \x1b, \u009b, \u202e, \\),
// and a byte that is not UTF-8 as \xNN.
func printable(s string) string {
	var b []byte
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = fmt.Appendf(b, `\x%02x`, s[i])
		case r == '\\':
			b = append(b, `\\`...)
		case !shownAsIs(r):
			q := strconv.QuoteRune(r) // 'X' with X escaped
			b = append(b, q[1:len(q)-1]...)
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return string(b)
}

// jsonText is a string that encodes to JSON with every rune that is not
// shownAsIs written as a \u escape: encoding/json leaves DEL, C1 controls
// and format characters raw. The value a JSON reader gets is the text
// itself; a byte that is not UTF-8 becomes U+FFFD, as with encoding/json.
type jsonText string

// MarshalJSON implements json.Marshaler.
func (t jsonText) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, len(t)+2)
	b = append(b, '"')
	for _, r := range string(t) { // a byte that is not UTF-8 yields U+FFFD
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r == utf8.RuneError || !shownAsIs(r):
			b = appendUnicodeEscape(b, r)
		default:
			b = utf8.AppendRune(b, r)
		}
	}
	return append(b, '"'), nil
}

// appendUnicodeEscape appends r as \uXXXX, or as a UTF-16 surrogate pair of
// them beyond the Basic Multilingual Plane.
func appendUnicodeEscape(b []byte, r rune) []byte {
	if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
		return fmt.Appendf(b, `\u%04x\u%04x`, r1, r2)
	}
	return fmt.Appendf(b, `\u%04x`, r)
}
