// Command hastatus shows the state of PKCS#11 HA groups from a shell or a
// monitoring system. It reads the same configuration as libhaext.so
// (Chrystoki.conf or crystoki.ini in $ChrystokiConfigurationPath, else
// /etc/Chrystoki.conf) and checks the members with pkg/probe directly.
//
// Exit status, as Nagios/Icinga checks expect: 0 every member alive, 1 some
// down, 2 all down or no such group, 3 configuration or module error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/libhaext/libhaext/internal/halog"
	"github.com/libhaext/libhaext/internal/service"
	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/cryptoki"
	"github.com/libhaext/libhaext/pkg/probe"
)

// Exit codes.
const (
	exitAlive   = 0
	exitSome    = 1
	exitAllDown = 2
	exitError   = 3
)

// SchemaVersion is the version of the --json output.
const SchemaVersion = 1

const usage = `usage: hastatus [--json] [--group LABEL|SERIAL] [--timeout SECONDS]
                [--watch DURATION] [--config FILE]

Shows every member of the configured HA groups: serial, token label, slot,
status (alive, or down with the reason) and how long its check took.

  --json              machine-readable output (schema in README.md)
  --group G           only the group with this label or serial
  --timeout SECONDS   overrides statusTimeout (1..60)
  --watch DURATION    check every DURATION (e.g. 1s) and print each change
                      with a timestamp until interrupted
  --config FILE       the configuration file (default: as libhaext.so finds it)

Exit status: 0 all members alive, 1 some down, 2 all down or no such group,
3 configuration or module error.
`

// system is what hastatus takes from its surroundings.
type system struct {
	getenv     func(string) string
	exists     func(string) bool
	openModule func(path string) (probe.Module, error)
	now        func() time.Time
}

func main() {
	if os.Getenv(guardEnv) == "" {
		os.Exit(guard(os.Args[1:])) // the work is done in a child: see guard.go
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, system{
		getenv: os.Getenv,
		exists: func(path string) bool {
			st, err := os.Stat(path)
			return err == nil && st.Mode().IsRegular()
		},
		openModule: func(path string) (probe.Module, error) { return cryptoki.Open(path) },
		now:        time.Now,
	}))
}

type options struct {
	json    bool
	group   string
	timeout string
	watch   time.Duration
	config  string
}

func parseArgs(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("hastatus", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.BoolVar(&o.json, "json", false, "")
	fs.StringVar(&o.group, "group", "", "")
	fs.StringVar(&o.timeout, "timeout", "", "")
	fs.DurationVar(&o.watch, "watch", 0, "")
	fs.StringVar(&o.config, "config", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, usage)
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.watch < 0 || (o.watch > 0 && o.watch < 100*time.Millisecond) {
		return o, fmt.Errorf("--watch %v: use 100ms or more", o.watch)
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, sys system) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "hastatus: %v\n", err)
		return exitError
	}
	o, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitAlive
	} else if err != nil {
		return fail(err)
	}

	path := o.config
	if path == "" {
		if path, err = conf.Locate(sys.getenv, sys.exists); err != nil {
			return fail(err)
		}
	}
	cfg, err := conf.Load(path)
	if err != nil {
		return fail(err)
	}
	timeout := cfg.StatusTimeout
	if o.timeout != "" {
		var warning string
		if timeout, warning = conf.ParseStatusTimeout(o.timeout); warning != "" {
			fmt.Fprintf(stderr, "hastatus: --timeout: %s\n", warning)
		}
	}
	groups := cfg.Groups
	if o.group != "" {
		g, ok := findGroup(cfg, o.group)
		if !ok {
			fmt.Fprintf(stderr, "hastatus: no HA group %q in %s\n", o.group, cfg.File)
			return exitAllDown
		}
		groups = []conf.Group{g}
	}
	mod, err := sys.openModule(cfg.ModulePath)
	if err != nil {
		return fail(fmt.Errorf("%s: Chrystoki2/LibUNIX64: %w", cfg.File, err))
	}
	eng := probe.New(mod, groups, probe.Options{Timeout: timeout})
	service.RaiseProcs(sys.getenv, eng.WantProcs())
	eng.Start()
	defer eng.Close()

	reports := checkAll(eng, sys.now)
	if o.json {
		err = writeJSON(stdout, reports, timeout, sys.now(), o.watch == 0)
	} else {
		err = writeTable(stdout, reports, timeout)
	}
	if err != nil {
		return fail(err)
	}
	if o.watch > 0 {
		reports = watch(ctx, eng, reports, o, stdout, sys.now)
	}
	return exitCode(reports)
}

// findGroup finds a group by label, else by serial.
func findGroup(cfg *conf.Config, want string) (conf.Group, bool) {
	for _, g := range cfg.Groups {
		if g.Label == want {
			return g, true
		}
	}
	if serial, err := conf.ParseSerial(want); err == nil {
		if g, ok := cfg.GroupBySerial(serial); ok {
			return *g, true
		}
	}
	return conf.Group{}, false
}

// report is one group's check.
type report struct {
	group    conf.Group
	verdicts []probe.Verdict
}

func checkAll(eng *probe.Engine, now func() time.Time) []report {
	groups := eng.Groups()
	out := make([]report, len(groups))
	for i, g := range groups {
		out[i] = report{group: g, verdicts: eng.Check(i, now().Add(eng.Timeout()), nil)}
	}
	return out
}

func exitCode(reports []report) int {
	alive, total := 0, 0
	for _, r := range reports {
		for _, v := range r.verdicts {
			total++
			if v.Status == probe.StatusOK {
				alive++
			}
		}
	}
	switch {
	case alive == total:
		return exitAlive
	case alive == 0:
		return exitAllDown
	}
	return exitSome
}

// describe is a member's status in words: alive, or down and why.
func describe(status uint) string {
	if status == probe.StatusOK {
		return "alive"
	}
	return "down (" + halog.Reason(status) + ")"
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
			r.group.Label, r.group.Serial, timeout)
		tw := tabwriter.NewWriter(&b, 0, 4, 3, ' ', 0)
		fmt.Fprintln(tw, "Member S/N\tMember Label\tSlot #\tStatus\tCheck")
		fmt.Fprintln(tw, "==========\t============\t======\t======\t=====")
		for j, v := range r.verdicts {
			label := v.Label
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

// jsonMember is one member in the --json output; see README.md.
type jsonMember struct {
	Serial     string  `json:"serial"`     // as configured
	SerialDec  string  `json:"serial_dec"` // memberSerial, decimal
	Label      string  `json:"label"`
	Slot       *uint   `json:"slot"` // null when not resolved
	Status     uint    `json:"status"`
	StatusName string  `json:"status_name"`
	Alive      bool    `json:"alive"`
	Reason     string  `json:"reason"`
	CheckMS    float64 `json:"check_ms"`
}

type jsonGroup struct {
	Label    string       `json:"label"`
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
		Serial: m.SerialText, SerialDec: strconv.FormatUint(v.Serial, 10), Label: v.Label,
		Status: v.Status, StatusName: probe.StatusName(v.Status), Alive: v.Status == probe.StatusOK,
		Reason: halog.Reason(v.Status), CheckMS: millis(v.Took),
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
		g := jsonGroup{Label: r.group.Label, Serial: strconv.FormatUint(r.group.Serial, 10),
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
	Group  string     `json:"group"`
	Old    string     `json:"old"`
	Member jsonMember `json:"member"`
}

// watch checks every o.watch until ctx ends and prints each member whose
// status changed. It returns the last reports.
func watch(ctx context.Context, eng *probe.Engine, last []report, o options, w io.Writer,
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
		cur := checkAll(eng, now)
		at := now().UTC()
		for i, r := range cur {
			for j, v := range r.verdicts {
				old := last[i].verdicts[j].Status
				if v.Status == old {
					continue
				}
				if o.json {
					_ = enc.Encode(jsonTransition{Schema: SchemaVersion, Time: at.Format(time.RFC3339Nano),
						Group: r.group.Label, Old: probe.StatusName(old), Member: toJSONMember(r.group.Members[j], v)})
				} else {
					fmt.Fprintf(w, "%s  %s  %s  %s -> %s\n", at.Format("2006-01-02T15:04:05.000Z"), r.group.Label,
						r.group.Members[j].SerialText, describe(old), describe(v.Status))
				}
			}
		}
		last = cur
	}
}
