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
	mod      *cryptoki.Module // the engine's
	lent     *cryptoki.Module // the host's, from Lend
	notice   string           // said once, by TakeNotice
	failure  error
	failedAt time.Time
	before   func() // BeforeState
}

// BeforeState sets what every status call runs first (a front module
// applies the host's lifecycle events queued before the call). Call it
// before the first status call.
func (s *Service) BeforeState(f func()) { s.before = f }

// perCallerNotice is what libhaext says when it runs an instance of its own
// of a module that gives each caller one.
const perCallerNotice = "%s gives each caller of C_GetFunctionList its own instance (p11-kit-proxy does): " +
	"libhaext runs an instance of its own, which keeps its own connections to the members and can make " +
	"the host's re-initialization fail; hand libhaext the host's function list with " +
	"CA_SetHAExtFunctionList, or load libhaext-pkcs11.so in front of the module"

// New returns a Service that loads everything on first use.
func New(env Env) *Service { return &Service{env: env} }

// State reports on the group slot names, writing the verdicts into out.
// head is what the status call's C entry point started before it entered
// Go (the zero HeadStart: nothing).
func (s *Service) State(slot uint, head probe.HeadStart, out []probe.Verdict) (Report, error) {
	start := time.Now()
	if s.before != nil {
		s.before()
	}
	eng, err := s.engine(start)
	if err != nil {
		return Report{}, err
	}
	serial, verdicts, err := eng.Answer(slot, head, start, out)
	switch {
	case errors.Is(err, probe.ErrUnknownSlot):
		return Report{}, fmt.Errorf("slot %d: %w", slot, err)
	case err != nil:
		return Report{}, fmt.Errorf("slot %d: %w: %w", slot, ErrTransient, err)
	}
	return Report{GroupSerial: serial, Verdicts: verdicts}, nil
}

// Group returns the serial of the group slot names, as a status call
// would resolve it (the engine loaded on first use, the slot looked up by
// probe.Engine.GroupForSlot), within statusTimeout; its errors are
// State's. It checks no member (CA_HAExtSetStateCallback).
func (s *Service) Group(slot uint) (uint64, error) {
	start := time.Now()
	if s.before != nil {
		s.before()
	}
	eng, err := s.engine(start)
	if err != nil {
		return 0, err
	}
	g, err := eng.GroupForSlot(slot, start.Add(eng.Timeout()))
	switch {
	case errors.Is(err, probe.ErrUnknownSlot):
		return 0, fmt.Errorf("slot %d: %w", slot, err)
	case err != nil:
		return 0, fmt.Errorf("slot %d: %w: %w", slot, ErrTransient, err)
	}
	return eng.Groups()[g].Serial, nil
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
	s.mu.Lock()
	lent := s.lent
	s.mu.Unlock()
	eng, mod, err := s.launch(cfg, lent)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loading = nil
	if err != nil {
		s.failure, s.failedAt = err, time.Now()
		return
	}
	s.eng, s.mod, s.failure = eng, mod, nil
}

// launch starts an engine over the lent module, else over the configured
// one, which it opens.
func (s *Service) launch(cfg *conf.Config, mod *cryptoki.Module) (*probe.Engine, *cryptoki.Module, error) {
	if mod == nil {
		var err error
		if mod, err = s.env.OpenModule(cfg.ModulePath); err != nil {
			return nil, nil, fmt.Errorf("%s: %s: %w", cfg.File, cfg.ModuleKey, err)
		}
	}
	if !mod.Lent() && mod.PerCaller() {
		notice := fmt.Sprintf(perCallerNotice, cfg.ModulePath)
		s.mu.Lock()
		s.notice = notice
		s.mu.Unlock()
		withNotice := *cfg
		withNotice.Warnings = append(append([]string(nil), cfg.Warnings...), notice)
		cfg = &withNotice
	}
	opts := probe.Options{Timeout: cfg.StatusTimeout, NoSession: cfg.NoSession}
	if s.env.Observe != nil {
		s.env.Observe(cfg, &opts)
	}
	eng, err := probe.Launch(mod, cfg.Groups, opts, s.env.Getenv)
	return eng, mod, err
}

// Engine returns the running engine, or nil before it is loaded.
func (s *Service) Engine() *probe.Engine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng
}

// TakeNotice returns, once, what the library has to tell the host about
// its module (that it gives each caller its own instance), or "".
func (s *Service) TakeNotice() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.notice
	s.notice = ""
	return n
}

// Lend makes the library use the module instance the host uses itself
// (CA_SetHAExtFunctionList): from the first status call on, or at once when
// the engine already runs over an instance of its own, which it then
// stops and, when nothing of it is left in flight, finalizes.
func (s *Service) Lend(mod *cryptoki.Module) error {
	s.mu.Lock()
	s.lent = mod
	loading := s.loading
	timeout := conf.DefaultStatusTimeout
	if s.cfg != nil {
		timeout = s.cfg.StatusTimeout
	}
	s.mu.Unlock()
	if loading != nil {
		select {
		case <-loading:
		case <-time.After(timeout):
			return fmt.Errorf("%w: %w", ErrTransient, errStillLoading)
		}
	}
	s.mu.Lock()
	old, oldMod, cfg := s.eng, s.mod, s.cfg
	s.mu.Unlock()
	if old == nil || oldMod == mod {
		return nil // the next load uses it
	}
	eng, _, err := s.launch(cfg, mod)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.eng, s.mod, s.notice = eng, mod, ""
	s.mu.Unlock()
	old.Close()
	if old.Quiet() {
		_ = oldMod.Release() // its own instance: close its connections
	}
	return nil
}
