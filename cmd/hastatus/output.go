package main

// What hastatus prints: the table, the --json document, and --watch's
// lines.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/probe"
)

// describe is a member's status in words: alive, or down and why.
func describe(status probe.Status) string {
	if status.Alive() {
		return "alive"
	}
	return "down (" + status.Reason() + ")"
}

func slotText(v probe.Verdict) string {
	if !v.HasSlot {
		return "-"
	}
	return strconv.FormatUint(uint64(v.Slot), 10)
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func writeTable(w io.Writer, reports []report, timeout time.Duration) error {
	var b strings.Builder
	for i, r := range reports {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "HA Group Label:   %s\nHA Group Number:  %d\nStatus Timeout:   %v\n\n",
			printable(r.group.Label), r.group.Serial, timeout)
		tw := tabwriter.NewWriter(&b, 0, 4, 3, ' ', 0)
		fmt.Fprintln(tw, "Member S/N\tMember Label\tSlot #\tStatus\tCheck")
		fmt.Fprintln(tw, "==========\t============\t======\t======\t=====")
		for j, v := range r.verdicts {
			label := printable(v.Label)
			if label == "" {
				label = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f ms\n", r.group.Members[j].SerialText, label, slotText(v),
				describe(v.Status), millis(v.Took))
		}
		tw.Flush()
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// jsonMember is one member in the --json output; see docs/HASTATUS.md.
type jsonMember struct {
	Serial     string   `json:"serial"`     // as configured
	SerialDec  string   `json:"serial_dec"` // memberSerial, decimal
	Label      jsonText `json:"label"`
	Slot       *uint    `json:"slot"` // null when not resolved
	Status     uint     `json:"status"`
	StatusName string   `json:"status_name"`
	Alive      bool     `json:"alive"`
	Reason     string   `json:"reason"`
	CheckMS    float64  `json:"check_ms"`
}

type jsonGroup struct {
	Label    jsonText     `json:"label"`
	Serial   string       `json:"serial"` // decimal
	TimeoutS float64      `json:"timeout_s"`
	Members  []jsonMember `json:"members"`
}

type jsonOutput struct {
	Schema int         `json:"schema"`
	Time   string      `json:"time"`
	Groups []jsonGroup `json:"groups"`
}

func toJSONMember(m conf.Member, v probe.Verdict) jsonMember {
	jm := jsonMember{
		Serial: m.SerialText, SerialDec: strconv.FormatUint(v.Serial, 10), Label: jsonText(v.Label),
		Status: uint(v.Status), StatusName: v.Status.String(), Alive: v.Status.Alive(),
		Reason: v.Status.Reason(), CheckMS: millis(v.Took),
	}
	if v.HasSlot {
		slot := v.Slot
		jm.Slot = &slot
	}
	return jm
}

// writeJSON writes the document, indented for a person, or on one line
// when a --watch stream of JSON lines follows it.
func writeJSON(w io.Writer, reports []report, timeout time.Duration, now time.Time, indent bool) error {
	out := jsonOutput{Schema: SchemaVersion, Time: now.UTC().Format(time.RFC3339Nano), Groups: []jsonGroup{}}
	for _, r := range reports {
		g := jsonGroup{Label: jsonText(r.group.Label), Serial: strconv.FormatUint(r.group.Serial, 10),
			TimeoutS: timeout.Seconds(), Members: []jsonMember{}}
		for j, v := range r.verdicts {
			g.Members = append(g.Members, toJSONMember(r.group.Members[j], v))
		}
		out.Groups = append(out.Groups, g)
	}
	enc := json.NewEncoder(w)
	if indent {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(out)
}

// jsonTransition is one line of --watch --json output.
type jsonTransition struct {
	Schema int        `json:"schema"`
	Time   string     `json:"time"`
	Group  jsonText   `json:"group"`
	Old    string     `json:"old"`
	Member jsonMember `json:"member"`
}

// watch checks every o.watch until ctx ends and prints each member whose
// status changed. It returns the last reports.
func watch(ctx context.Context, c *checker, last []report, o options, w io.Writer,
	now func() time.Time) []report {
	tick := time.NewTicker(o.watch)
	defer tick.Stop()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-ctx.Done():
			return last
		case <-tick.C:
		}
		c.mend(last, now())
		cur := checkAll(c.eng, now)
		at := now().UTC()
		for i, r := range cur {
			for j, v := range r.verdicts {
				old := last[i].verdicts[j].Status
				if v.Status == old {
					continue
				}
				if o.json {
					_ = enc.Encode(jsonTransition{Schema: SchemaVersion, Time: at.Format(time.RFC3339Nano),
						Group: jsonText(r.group.Label), Old: old.String(), Member: toJSONMember(r.group.Members[j], v)})
				} else {
					fmt.Fprintf(w, "%s  %s  %s  %s -> %s\n", at.Format("2006-01-02T15:04:05.000Z"), printable(r.group.Label),
						r.group.Members[j].SerialText, describe(old), describe(v.Status))
				}
			}
		}
		last = cur
	}
}
