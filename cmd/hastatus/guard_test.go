package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestGuardChild is not a test: it is the child that supervise starts in
// the tests below, acting as GUARD_CHILD says.
func TestGuardChild(t *testing.T) {
	switch os.Getenv("GUARD_CHILD") {
	case "":
		return
	case "report":
		fmt.Println("a report")
		os.Exit(exitSome)
	case "module-exit":
		fmt.Fprintln(os.Stderr, "SSL_connect: verify result: unable to get local issuer certificate")
		fmt.Fprintln(os.Stderr, "OpenSSL Error\x1b[2J")
		os.Exit(255)
	case "killed":
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	case "wait":
		fmt.Println("ready")
		var b [1]byte
		_, _ = os.Stdin.Read(b[:]) // until the guard's signal ends the child
	}
	select {}
}

func runChild(t *testing.T, mode string, sigs chan os.Signal) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	if sigs == nil {
		sigs = make(chan os.Signal)
	}
	code := supervise(os.Args[0], []string{"-test.run=^TestGuardChild$"},
		append(os.Environ(), "GUARD_CHILD="+mode), &out, &errb, sigs)
	return code, out.String(), errb.String()
}

func TestGuardPassesHastatusExitStatusAndOutput(t *testing.T) {
	code, out, errs := runChild(t, "report", nil)
	assert.Equal(t, exitSome, code)
	assert.Contains(t, out, "a report")
	assert.NotContains(t, errs, "hastatus:")
}

func TestGuardReportsAModuleThatEndsTheProcess(t *testing.T) {
	code, _, errs := runChild(t, "module-exit", nil)
	assert.Equal(t, exitError, code, "a module error, as Nagios-style checks read it")
	assert.Contains(t, errs, "verify result: unable to get local issuer certificate\n",
		"the module's own lines pass through")
	last := errs[strings.LastIndex(errs, "hastatus:"):]
	assert.Contains(t, last, "exit status 255")
	assert.Contains(t, last, `it said: SSL_connect: verify result: unable to get local issuer certificate | OpenSSL Error\x1b[2J`)
	assert.NotContains(t, last, "\x1b", "no control characters reach the terminal from the summary")
}

func TestGuardReportsAChildKilledBySomeoneElse(t *testing.T) {
	code, _, errs := runChild(t, "killed", nil)
	assert.Equal(t, exitError, code)
	assert.Contains(t, errs, "hastatus: the check ended without a report (signal: killed)")
}

func TestGuardPassesSignalsOn(t *testing.T) {
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGTERM
	code, _, errs := runChild(t, "wait", sigs)
	assert.Equal(t, 128+int(syscall.SIGTERM), code, "the child ended by the signal the guard passed on")
	assert.Empty(t, errs, "and that is no module error")
}
