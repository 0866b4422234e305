package capi

import (
	"testing"

	"github.com/libhaext/libhaext/pkg/conf"
)

// The SA6 layout's member serials are the configured texts, which conf
// reads back as the serials the engine reports; a serial the configuration
// did not name falls back to decimal, which reads back the same.
func TestSerialText(t *testing.T) {
	noteSerialTexts(&conf.Config{Groups: []conf.Group{
		{Serial: 1000001, Members: []conf.Member{
			{Serial: 0x3b98afb755609f58, SerialText: "3b98afb755609f58"},
			{Serial: 1234567, SerialText: "1234567"},
		}},
		{Serial: 1000002, Members: []conf.Member{
			{Serial: 0x99d307ef822e2183, SerialText: "99D307EF822E2183"},
		}},
	}})
	for serial, want := range map[uint64]string{
		0x3b98afb755609f58: "3b98afb755609f58",
		1234567:            "1234567",
		0x99d307ef822e2183: "99D307EF822E2183",
		42:                 "42",
	} {
		got := serialText(serial)
		if got != want {
			t.Errorf("serialText(%d) = %q, want %q", serial, got, want)
		}
		back, err := conf.ParseSerial(got)
		if err != nil || back != serial {
			t.Errorf("conf.ParseSerial(%q) = %d, %v; want %d", got, back, err, serial)
		}
	}
}
