// Package service is the library's state behind the C exports: on first use
// it finds and reads the configuration, loads the vendor module and starts
// the probe engine; then it answers status calls by slot ID.
//
// Everything lives in a Service value, so tests make their own; the export
// layer holds the one instance of the process.
package service

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/probe"
)

// CK_RV values a status call returns besides CKR_OK.
const (
	RVOK             uint = 0x000
	RVSlotIDInvalid  uint = 0x003
	RVGeneralError   uint = 0x005
	RVFunctionFailed uint = 0x006
	RVArgumentsBad   uint = 0x007
)

// RetryInterval is the least time between two attempts to load a
// configuration or module that failed.
const RetryInterval = time.Second

// Env is what a Service needs from its surroundings.
type Env struct {
	// Getenv reads the environment as the C library sees it now.
	Getenv func(string) string
	// Exists reports whether a file exists (conf.Locate).
	Exists func(string) bool
	// OpenModule loads and initializes the vendor module.
	OpenModule func(path string) (probe.Module, error)
	// Observe, when set, wraps the engine options before the engine starts
	// (the HA log hooks in here).
	Observe func(cfg *conf.Config, opts *probe.Options)
}

// Service is one library instance.
type Service struct {
	env Env

	mu       sync.Mutex
	cfg      *conf.Config
	loading  chan struct{} // closed when the module load in progress ends
	eng      *probe.Engine
	failure  error
	failedAt time.Time

	errMu   sync.Mutex
	lastErr string
}

// New returns a Service that loads everything on first use.
func New(env Env) *Service { return &Service{env: env} }

// State reports on the group slot names, writing the verdicts into out. It
// returns the group serial, the verdicts and a CK_RV: RVOK whenever a report
// was produced.
func (s *Service) State(slot uint, out []probe.Verdict) (uint64, []probe.Verdict, uint) {
	start := time.Now()
	eng, err := s.engine(start)
	if err != nil {
		s.setLastError(err.Error())
		if errors.Is(err, errStillLoading) {
			return 0, out, RVFunctionFailed
		}
		return 0, out, RVGeneralError
	}
	deadline := start.Add(eng.Timeout())
	g, err := eng.GroupForSlot(slot, deadline)
	switch {
	case errors.Is(err, probe.ErrUnknownSlot):
		return 0, out, RVSlotIDInvalid
	case err != nil:
		s.setLastError(fmt.Sprintf("slot %d: %v", slot, err))
		return 0, out, RVFunctionFailed
	}
	out = eng.Check(g, deadline, out)
	return eng.Groups()[g].Serial, out, RVOK
}

var errStillLoading = errors.New("vendor module still loading at the deadline")

// engine returns the running engine, loading it on first use. A failed load
// is retried at most once per RetryInterval. The vendor module is loaded in
// the background so that a hung C_Initialize holds no caller past its
// statusTimeout.
func (s *Service) engine(start time.Time) (*probe.Engine, error) {
	s.mu.Lock()
	if s.eng != nil {
		defer s.mu.Unlock()
		return s.eng, nil
	}
	if s.loading == nil {
		if s.failure != nil && start.Sub(s.failedAt) < RetryInterval {
			defer s.mu.Unlock()
			return nil, s.failure
		}
		cfg, err := s.readConfig()
		if err != nil {
			s.failure, s.failedAt = err, time.Now()
			s.mu.Unlock()
			return nil, err
		}
		s.cfg = cfg
		s.loading = make(chan struct{})
		go s.load(cfg, s.loading)
	}
	loading, timeout := s.loading, s.cfg.StatusTimeout
	s.mu.Unlock()

	timer := time.NewTimer(time.Until(start.Add(timeout)))
	defer timer.Stop()
	select {
	case <-loading:
	case <-timer.C:
		return nil, errStillLoading
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.eng != nil {
		return s.eng, nil
	}
	return nil, s.failure
}

func (s *Service) readConfig() (*conf.Config, error) {
	path, err := conf.Locate(s.env.Getenv, s.env.Exists)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	cfg, err := conf.Load(path)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	return cfg, nil
}

// load opens the vendor module and starts the engine, then closes done.
func (s *Service) load(cfg *conf.Config, done chan struct{}) {
	defer close(done)
	mod, err := s.env.OpenModule(cfg.ModulePath)
	var eng *probe.Engine
	if err == nil {
		opts := probe.Options{Timeout: cfg.StatusTimeout}
		if s.env.Observe != nil {
			s.env.Observe(cfg, &opts)
		}
		eng = probe.New(mod, cfg.Groups, opts)
		RaiseProcs(s.env.Getenv, eng.WantProcs())
		eng.Start()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loading = nil
	if err != nil {
		s.failure, s.failedAt = fmt.Errorf("%s: Chrystoki2/LibUNIX64: %w", cfg.File, err), time.Now()
		return
	}
	s.eng, s.failure = eng, nil
}

// RaiseProcs raises GOMAXPROCS to want (see probe.Engine.WantProcs) unless
// the operator chose it with the GOMAXPROCS environment variable. The Go
// runtime inside libhaext.so is the library's own, so this touches nothing
// of the host's.
func RaiseProcs(getenv func(string) string, want int) {
	if getenv("GOMAXPROCS") != "" {
		return
	}
	if runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}

// Fail records the reason of a failure the caller turned into a CK_RV.
func (s *Service) Fail(reason string) { s.setLastError(reason) }

func (s *Service) setLastError(msg string) {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	s.lastErr = msg
}

// LastError returns the reason of the last failed call, or "".
func (s *Service) LastError() string {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.lastErr
}
