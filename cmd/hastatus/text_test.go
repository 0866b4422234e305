package main

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"m00":                    "m00",
		"a b-c_d.é€":             "a b-c_d.é€",
		"a\nb\tc\r":              `a\nb\tc\r`,
		"\x1b[31mred":            `\x1b[31mred`,
		"\x7f\u0085\u009b":       `\x7f\u0085\u009b`,
		"x\u202ey\u200bz":        `x\u202ey\u200bz`,
		"tag\U000E0001":          `tag\U000e0001`,
		`back\slash`:             `back\\slash`,
		"bad\xffutf8\xc3":        `bad\xffutf8\xc3`,
		"\u00a0nbsp\u3000ideo":   `\u00a0nbsp\u3000ideo`,
		"quotes \"'` stay as is": "quotes \"'` stay as is",
	} {
		assert.Equal(t, want, printable(in), "%q", in)
	}
}

func TestJSONText(t *testing.T) {
	for in, want := range map[string]string{
		"m00":           `"m00"`,
		"é€\"\\":        `"é€\"\\"`,
		"a\nb\x1b\x7f":  `"a\u000ab\u001b\u007f"`,
		"\u0085\u202e":  `"\u0085\u202e"`,
		"tag\U000E0001": `"tag\udb40\udc01"`,
		"bad\xffutf8":   `"bad\ufffdutf8"`,
		"<html> & co":   `"\u003chtml\u003e \u0026 co"`, // encoding/json's HTML escaping still applies
	} {
		out, err := json.Marshal(struct{ L jsonText }{jsonText(in)})
		require.NoError(t, err)
		assert.Equal(t, `{"L":`+want+`}`, string(out), "%q", in)
		var back struct{ L string }
		require.NoError(t, json.Unmarshal(out, &back))
		if in != "bad\xffutf8" {
			assert.Equal(t, in, back.L, "a JSON reader gets the text exactly")
		}
	}
}
