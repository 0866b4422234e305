// Command hastatus shows the state of PKCS#11 HA groups from a shell or a
// monitoring system. It reads the same configuration as libhaext.so
// (Chrystoki.conf or crystoki.ini in $ChrystokiConfigurationPath, else
// /etc/Chrystoki.conf) and checks the members with pkg/probe directly.
//
// Exit status, as Nagios/Icinga checks expect: 0 every member alive, 1 some
// down, 2 all down or no such group, 3 configuration or module error.
//
// With --listen HOST:PORT it is a Prometheus exporter instead (exporter.go):
// it serves /metrics until interrupted, and exits 0 then, 3 on an error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/libhaext/libhaext/internal/halog"
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
                [--watch DURATION | --listen HOST:PORT] [--config FILE]

Shows every member of the configured HA groups: serial, token label, slot,
status (alive, or down with the reason) and how long its check took.

  --json              machine-readable output (schema in docs/HASTATUS.md)
  --group G           only the group with this label or serial
  --timeout SECONDS   overrides statusTimeout (1..60)
  --watch DURATION    check every DURATION (e.g. 1s) and print each change
                      with a timestamp until interrupted
  --listen HOST:PORT  serve the state as Prometheus metrics on
                      http://HOST:PORT/metrics until interrupted (one check
                      per scrape, shared by concurrent scrapes)
  --config FILE       the configuration file (default: as libhaext.so finds it)

Exit status: 0 all members alive, 1 some down, 2 all down or no such group,
3 configuration or module error. With --listen: 0 when interrupted, 3 on an
error (a bad address, a port in use, the configuration, the module).
`

// system is what hastatus takes from its surroundings.
type system struct {
	getenv     func(string) string
	exists     func(string) bool
	openModule func(path string) (*cryptoki.Module, error)
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
		openModule: cryptoki.Open,
		now:        time.Now,
	}))
}

type options struct {
	json    bool
	group   string
	timeout string
	watch   time.Duration
	config  string
	listen  string
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
	fs.StringVar(&o.listen, "listen", "", "")
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
	if o.listen != "" {
		switch {
		case o.json:
			return o, errors.New("--listen serves Prometheus metrics and cannot be combined with --json")
		case o.watch > 0:
			return o, errors.New("--listen checks at each scrape and cannot be combined with --watch")
		}
		if err := checkListen(o.listen); err != nil {
			return o, err
		}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, sys system) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "hastatus: %s\n", printable(err.Error()))
		return exitError
	}
	o, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitAlive
	} else if err != nil {
		return fail(err)
	}
	cfg, timeout, err := configure(o, sys, stderr)
	if err != nil {
		return fail(err)
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
	if o.listen != "" {
		if err := export(ctx, o, cfg, groups, timeout, sys, stderr); err != nil {
			return fail(err)
		}
		return exitAlive
	}
	c, err := startEngine(cfg, groups, timeout, sys, stderr)
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	code, err := show(ctx, c, o, stdout, sys.now)
	if err != nil {
		return fail(err)
	}
	return code
}

// configure reads the configuration, prints its warnings on stderr and
// returns it with the status timeout to use (--timeout, else the file's).
func configure(o options, sys system, stderr io.Writer) (*conf.Config, time.Duration, error) {
	path := o.config
	if path == "" {
		var err error
		if path, err = conf.Locate(sys.getenv, sys.exists); err != nil {
			return nil, 0, err
		}
	}
	cfg, err := conf.Load(path)
	if err != nil {
		return nil, 0, err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stderr, "hastatus: warning: %s\n", printable(w))
	}
	if cfg.HALog.Enabled {
		if err := halog.CheckDir(cfg.HALog.Dir); err != nil {
			fmt.Fprintf(stderr, "hastatus: warning: %s: %s; the library writes no HA log file\n", cfg.File, printable(err.Error()))
		}
	}
	timeout := cfg.StatusTimeout
	if o.timeout != "" {
		var warning string
		if timeout, warning = conf.ParseStatusTimeout(o.timeout); warning != "" {
			fmt.Fprintf(stderr, "hastatus: --timeout: %s\n", printable(warning))
		}
	}
	return cfg, timeout, nil
}

// checker is hastatus's engine over its own module. hastatus is its own
// host: when members are lost it may initialize the module again (a vendor
// client such as p11-kit's reconnects only then), at most once a second.
type checker struct {
	mod      *cryptoki.Module
	eng      *probe.Engine
	start    func() (*probe.Engine, error)
	restarts time.Time // the last restart
}

// startEngine loads the vendor module and starts checking the groups.
func startEngine(cfg *conf.Config, groups []conf.Group, timeout time.Duration, sys system, stderr io.Writer) (*checker, error) {
	mod, err := sys.openModule(cfg.ModulePath)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", cfg.File, cfg.ModuleKey, err)
	}
	if mod.PerCaller() {
		fmt.Fprintf(stderr, "hastatus: note: %s gives each caller of C_GetFunctionList its own instance; "+
			"hastatus runs its own, as it should, but an application must lend libhaext its own "+
			"(CA_SetHAExtFunctionList) or load libhaext-pkcs11.so in front of it\n", printable(cfg.ModulePath))
	}
	c := &checker{mod: mod, start: func() (*probe.Engine, error) {
		return probe.Launch(mod, groups, probe.Options{Timeout: timeout, NoSession: cfg.NoSession}, sys.getenv)
	}}
	if c.eng, err = c.start(); err != nil {
		return nil, err
	}
	return c, nil
}

// lost reports whether a status says the member's connection or instance
// is gone (not merely slow): what initializing the module again can mend.
func lost(s probe.Status) bool {
	return s == probe.StatusSocketDown || s == probe.StatusNoInstance || cryptoki.FailOver(uint(s))
}

// mend initializes the module again when a member in reports is lost, the
// last restart is a second old and no member's call is stuck. The engine is closed first; the module
// is finalized only when none of the engine's calls is left in flight
// (C_Finalize during a call is undefined behaviour), and a new engine
// starts over it either way.
func (c *checker) mend(reports []report, now time.Time) {
	if !c.mod.Owner() || now.Sub(c.restarts) < time.Second || !anyLost(reports) || c.eng.Stuck() > 0 {
		return // a hung member's call must stay the only one it has
	}
	c.restarts = now
	c.eng.Close()
	if c.eng.Quiet() {
		_ = c.mod.Restart()
	}
	if eng, err := c.start(); err == nil {
		c.eng = eng
	}
}

func anyLost(reports []report) bool {
	for _, r := range reports {
		for _, v := range r.verdicts {
			if lost(v.Status) {
				return true
			}
		}
	}
	return false
}

// Close stops the engine.
func (c *checker) Close() { c.eng.Close() }

// show prints the groups' state once, then, with --watch, each change
// until ctx ends; it returns the exit status for the last state.
func show(ctx context.Context, c *checker, o options, w io.Writer, now func() time.Time) (int, error) {
	reports := checkAll(c.eng, now)
	var err error
	if o.json {
		err = writeJSON(w, reports, c.eng.Timeout(), now(), o.watch == 0)
	} else {
		err = writeTable(w, reports, c.eng.Timeout())
	}
	if err != nil {
		return exitError, err
	}
	if o.watch > 0 {
		reports = watch(ctx, c, reports, o, w, now)
	}
	return exitCode(reports), nil
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
			if v.Status.Alive() {
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
