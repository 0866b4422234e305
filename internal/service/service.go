// Package service is the library's state behind the C exports: on first use
// it finds and reads the configuration, loads the vendor module and starts
// the probe engine; then it answers status calls by slot ID.
//
// Everything lives in a Service value, so tests make their own; the export
// layer (internal/capi) holds the one instance of the process and maps a
// Report or an error to a CK_RV.
package service

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libhaext/libhaext/pkg/conf"
	"github.com/libhaext/libhaext/pkg/cryptoki"
	"github.com/libhaext/libhaext/pkg/probe"
)

// RetryInterval is the least time between two attempts to load a
// configuration or module that failed.
const RetryInterval = time.Second

// ErrTransient marks a failure worth retrying soon (CKR_FUNCTION_FAILED):
// the module or its slot list could not be read before the deadline, or the
// host finalized the module. Other errors are configuration or module
// failures (CKR_GENERAL_ERROR), except probe.ErrUnknownSlot.
var ErrTransient = errors.New("try again")

var errStillLoading = errors.New("vendor module still loading at the deadline")

// Env is what a Service needs from its surroundings.
type Env struct {
	// Getenv reads the environment as the C library sees it now.
	Getenv func(string) string
	// Exists reports whether a file exists (conf.Locate).
	Exists func(string) bool
	// OpenModule loads and initializes the vendor module.
	OpenModule func(path string) (*cryptoki.Module, error)
	// Observe, when set, wraps the engine options before the engine starts
	// (the HA log hooks in here).
	Observe func(cfg *conf.Config, opts *probe.Options)
}

// Report is the answer to one status call.
type Report struct {
	GroupSerial uint64
	Verdicts    []probe.Verdict
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
}

// New returns a Service that loads everything on first use.
func New(env Env) *Service { return &Service{env: env} }

// State reports on the group slot names, writing the verdicts into out.
func (s *Service) State(slot uint, out []probe.Verdict) (Report, error) {
	start := time.Now()
	eng, err := s.engine(start)
	if err != nil {
		return Report{}, err
	}
	deadline := start.Add(eng.Timeout())
	g, err := eng.GroupForSlot(slot, deadline)
	switch {
	case errors.Is(err, probe.ErrUnknownSlot):
		return Report{}, fmt.Errorf("slot %d: %w", slot, err)
	case err != nil:
		return Report{}, fmt.Errorf("slot %d: %w: %w", slot, ErrTransient, err)
	}
	return Report{GroupSerial: eng.Groups()[g].Serial, Verdicts: eng.Check(g, deadline, out)}, nil
}

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
		return nil, fmt.Errorf("%w: %w", ErrTransient, errStillLoading)
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
	eng, err := s.launch(cfg)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loading = nil
	if err != nil {
		s.failure, s.failedAt = err, time.Now()
		return
	}
	s.eng, s.failure = eng, nil
}

func (s *Service) launch(cfg *conf.Config) (*probe.Engine, error) {
	mod, err := s.env.OpenModule(cfg.ModulePath)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", cfg.File, cfg.ModuleKey, err)
	}
	opts := probe.Options{Timeout: cfg.StatusTimeout, NoSession: cfg.NoSession}
	if s.env.Observe != nil {
		s.env.Observe(cfg, &opts)
	}
	return probe.Launch(mod, cfg.Groups, opts, s.env.Getenv)
}
