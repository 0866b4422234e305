package main

// hastatus --listen HOST:PORT: the groups' state as Prometheus metrics.
//
// The exporter keeps one engine for the process, as --watch does, and
// checks the groups only when it is scraped: a scrape starts a check of
// every group (all groups at once, one deadline of statusTimeout), or
// joins the check in flight, and is answered with that check's verdicts.
// Nothing runs between scrapes: no ticker, no background poll. A scrape
// never starts a second check while one runs, and never waits longer than
// statusTimeout (plus a grace of checkGrace for the check's own return):
// the engine reports a hung member CKR_HA_TIMEOUT by the deadline, and a
// check that outran its deadline anyway leaves the scrape with the last
// check's result.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/libhaext/libhaext/pkg/conf"
)

// checkGrace is how long past a check's deadline a scrape still waits for
// it: the engine answers at the deadline, and its goroutines need a moment
// to be scheduled on a busy machine.
const checkGrace = 250 * time.Millisecond

// maxScrapes is the most /metrics requests served at once; more get 503.
// They share one check, so this only bounds the goroutines a flood makes.
const maxScrapes = 40

// checkBuckets are the histogram's upper bounds, in seconds; the status
// timeout is added to them, so that the checks that ran into the deadline
// are the count above that bucket.
var checkBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// checkListen checks a --listen value before anything is loaded.
func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: %w; use HOST:PORT, e.g. 127.0.0.1:9464", addr, err)
	}
	if port == "" {
		return fmt.Errorf("--listen %q: no port; use HOST:PORT, e.g. 127.0.0.1:9464", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil && !isServiceName(port) {
		return fmt.Errorf("--listen %q: port %q is not a number from 0 to 65535", addr, port)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("--listen %q: %q is not a host name or address", addr, host)
	}
	return nil
}

// isServiceName reports whether s looks like a service name (http, 9464's
// name in /etc/services), which net.Listen looks up.
func isServiceName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return s != "" && (s[0] < '0' || s[0] > '9')
}

// listen opens the exporter's socket, with an error that names the flag.
func listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", addr, err)
	}
	return ln, nil
}

// exporter is a prometheus.Collector over a checker: each Collect is a
// check of every group, shared with the scrapes that come while it runs.
type exporter struct {
	c       *checker
	groups  []conf.Group
	names   []string // each group's value of the group label
	timeout time.Duration
	now     func() time.Time

	up, status, took, stamp, timeoutDesc, info *prometheus.Desc
	infoLabels                                 []string
	duration                                   *prometheus.HistogramVec
	checks, stale                              prometheus.Counter

	mu     sync.Mutex
	flight *flight   // the check in flight, or mending after it; nil when none
	last   *snapshot // the last check's result
	closed bool
}

// snapshot is the result of one check of every group.
type snapshot struct {
	start   time.Time
	reports []report
}

// flight is one check of every group.
type flight struct {
	start    time.Time // the check's start: its deadline is statusTimeout later
	deadline time.Time
	done     chan struct{} // closed when snap is set
	snap     *snapshot
	over     chan struct{} // closed when the flight has ended (mend included)
}

// exporterInfo is what haext_config_info says.
type exporterInfo struct {
	config, module string
}

// newExporter makes the collector over c, which checks groups with the
// status timeout timeout.
func newExporter(c *checker, groups []conf.Group, timeout time.Duration, info exporterInfo,
	now func() time.Time) *exporter {
	x := &exporter{c: c, groups: groups, names: groupNames(groups), timeout: timeout, now: now}
	member := []string{"group", "member"}
	x.up = prometheus.NewDesc("haext_member_up",
		"1 when the member is usable (all three stages passed: CKR_OK), 0 when not.", member, nil)
	x.status = prometheus.NewDesc("haext_member_status",
		"The member's status as a number: the CK_RV of its check (0 CKR_OK, 3359703041 CKR_HA_NO_INSTANCE, "+
			"3359703042 CKR_HA_SOCKET_DOWN, 3359703043 CKR_HA_TIMEOUT, or the vendor's own); its name is the status label.",
		[]string{"group", "member", "status"}, nil)
	x.took = prometheus.NewDesc("haext_member_check_duration_seconds",
		"How long the member's verdict took in the last check.", member, nil)
	x.stamp = prometheus.NewDesc("haext_last_check_timestamp_seconds",
		"When the check these metrics come from started, in seconds since the Unix epoch.", nil, nil)
	x.timeoutDesc = prometheus.NewDesc("haext_status_timeout_seconds",
		"statusTimeout: the longest a check, and so a scrape, waits for the members.", nil, nil)
	x.infoLabels = []string{strings.ToValidUTF8(info.config, "\uFFFD"), strings.ToValidUTF8(info.module, "\uFFFD"),
		formatSeconds(timeout), strings.Join(x.names, ",")}
	x.info = prometheus.NewDesc("haext_config_info",
		"The configuration hastatus checks: its file, the vendor module, statusTimeout in seconds and the groups "+
			"(their group label values, comma-separated). Always 1.",
		[]string{"config", "module", "status_timeout", "groups"}, nil)
	x.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "haext_check_duration_seconds",
		Help:    "How long a status check of the group took (a scrape checks every group at once).",
		Buckets: withBucket(checkBuckets, timeout.Seconds()),
	}, []string{"group"})
	for _, n := range x.names {
		x.duration.WithLabelValues(n) // every group from the first scrape on, with a count of 0
	}
	x.checks = prometheus.NewCounter(prometheus.CounterOpts{Name: "haext_checks_total",
		Help: "Checks of every group made; concurrent scrapes share one."})
	x.stale = prometheus.NewCounter(prometheus.CounterOpts{Name: "haext_stale_scrapes_total",
		Help: "Scrapes answered with the previous check's result because the check in flight outran its deadline."})
	return x
}

// groupNames gives each group the value of its group label: its label,
// else (no label, or one that another group has too) its serial in
// decimal. Label values are UTF-8: a byte that is not becomes U+FFFD.
func groupNames(groups []conf.Group) []string {
	count := map[string]int{}
	for _, g := range groups {
		count[g.Label]++
	}
	names := make([]string, len(groups))
	for i, g := range groups {
		if g.Label != "" && count[g.Label] == 1 {
			names[i] = strings.ToValidUTF8(g.Label, "\uFFFD")
		} else {
			names[i] = strconv.FormatUint(g.Serial, 10)
		}
	}
	return names
}

func withBucket(buckets []float64, b float64) []float64 {
	out := append([]float64(nil), buckets...)
	for _, v := range out {
		if v == b {
			return out
		}
	}
	out = append(out, b)
	sort.Float64s(out)
	return out
}

func formatSeconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

// Describe implements prometheus.Collector.
func (x *exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{x.up, x.status, x.took, x.stamp, x.timeoutDesc, x.info} {
		ch <- d
	}
	x.duration.Describe(ch)
	x.checks.Describe(ch)
	x.stale.Describe(ch)
}

// Collect implements prometheus.Collector: it checks every group, or takes
// the check in flight, and sends its verdicts.
func (x *exporter) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(x.info, prometheus.GaugeValue, 1, x.infoLabels...)
	ch <- prometheus.MustNewConstMetric(x.timeoutDesc, prometheus.GaugeValue, x.timeout.Seconds())
	snap := x.result()
	if snap != nil {
		ch <- prometheus.MustNewConstMetric(x.stamp, prometheus.GaugeValue,
			float64(snap.start.UnixNano())/1e9)
		for i, r := range snap.reports {
			for j, v := range r.verdicts {
				g, m := x.names[i], strings.ToValidUTF8(r.group.Members[j].SerialText, "\uFFFD")
				up := 0.0
				if v.Status.Alive() {
					up = 1
				}
				ch <- prometheus.MustNewConstMetric(x.up, prometheus.GaugeValue, up, g, m)
				ch <- prometheus.MustNewConstMetric(x.status, prometheus.GaugeValue, float64(v.Status), g, m,
					v.Status.String())
				ch <- prometheus.MustNewConstMetric(x.took, prometheus.GaugeValue, v.Took.Seconds(), g, m)
			}
		}
	}
	x.duration.Collect(ch)
	x.checks.Collect(ch)
	x.stale.Collect(ch)
}

// result returns the result of the check in flight, starting one when none
// is: at its deadline (plus checkGrace) at the latest, else the last
// check's result (nil before the first check ended).
func (x *exporter) result() *snapshot {
	x.mu.Lock()
	if x.closed {
		defer x.mu.Unlock()
		return x.last
	}
	f := x.flight
	if f == nil {
		now := x.now()
		f = &flight{start: now, deadline: now.Add(x.timeout), done: make(chan struct{}), over: make(chan struct{})}
		x.flight = f
		go x.fly(f)
	}
	last := x.last
	x.mu.Unlock()
	timer := time.NewTimer(time.Until(f.deadline) + checkGrace)
	defer timer.Stop()
	select {
	case <-f.done:
		return f.snap
	case <-timer.C:
		x.stale.Inc()
		return last
	}
}

// fly checks every group at once, publishes the result, then lets the
// checker mend the module (re-initialize it when members are lost, as
// --watch does). The flight is over only after the mend: no check starts
// while the module is being initialized again, and a scrape meanwhile gets
// this result.
func (x *exporter) fly(f *flight) {
	defer func() {
		x.mu.Lock()
		x.flight = nil
		x.mu.Unlock()
		close(f.over)
	}()
	reports := make([]report, len(x.groups))
	var wg sync.WaitGroup
	for i := range x.groups {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			reports[i] = report{group: x.groups[i], verdicts: x.c.eng.Check(i, f.deadline, nil)}
			x.duration.WithLabelValues(x.names[i]).Observe(x.now().Sub(f.start).Seconds())
		}(i)
	}
	wg.Wait()
	x.checks.Inc()
	snap := &snapshot{start: f.start, reports: reports}
	x.mu.Lock()
	x.last, f.snap = snap, snap
	x.mu.Unlock()
	close(f.done)
	x.c.mend(reports, x.now())
}

// Close stops the engine once the check in flight, if any, is over; when
// that takes longer than statusTimeout (a hung re-initialization), the
// engine is left to the process's exit.
func (x *exporter) Close() {
	x.mu.Lock()
	x.closed = true
	f := x.flight
	x.mu.Unlock()
	if f != nil {
		t := time.NewTimer(x.timeout)
		defer t.Stop()
		select {
		case <-f.over:
		case <-t.C:
			return
		}
	}
	x.c.Close()
}

const indexPage = `<!DOCTYPE html>
<html><head><title>hastatus</title></head>
<body><h1>hastatus</h1>
<p>The state of the configured PKCS#11 HA groups, as Prometheus metrics: <a href="/metrics">/metrics</a>.
<a href="/healthz">/healthz</a> says whether the exporter itself is up.</p>
</body></html>
`

// handler serves /metrics, /healthz and / for the exporter.
func (x *exporter) handler(errLog *log.Logger) (http.Handler, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(x); err != nil {
		return nil, fmt.Errorf("the exporter's metrics: %w", err)
	}
	// The Go runtime's and the process's own metrics: read at a scrape,
	// from the runtime and /proc/self, with no goroutine of their own.
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("the Go collector: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("the process collector: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            errLog,
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: maxScrapes,
	}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, indexPage)
	})
	return mux, nil
}

// serveMetrics serves the exporter on ln until ctx ends, then shuts the
// server down (the scrapes in flight get their answers, for at most
// statusTimeout) and closes the exporter.
func serveMetrics(ctx context.Context, ln net.Listener, x *exporter, stderr io.Writer) error {
	defer x.Close()
	errLog := log.New(&lineWriter{w: stderr}, "hastatus: ", 0)
	h, err := x.handler(errLog)
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          errLog,
	}
	fmt.Fprintf(stderr, "hastatus: serving http://%s/metrics (statusTimeout %v)\n", ln.Addr(), x.timeout)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("--listen %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), x.timeout+checkGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("--listen %s: %w", ln.Addr(), err)
	}
	return nil
}

// lineWriter writes what the HTTP server and promhttp log, escaped for a
// terminal as hastatus's other messages are.
type lineWriter struct{ w io.Writer }

func (l *lineWriter) Write(p []byte) (int, error) {
	s := strings.TrimSuffix(string(p), "\n")
	if _, err := io.WriteString(l.w, printable(s)+"\n"); err != nil {
		return 0, err
	}
	return len(p), nil
}

// export is hastatus --listen: it listens first (a bad address or a port
// in use ends hastatus before the module is loaded), then starts the
// engine and serves until ctx ends.
func export(ctx context.Context, o options, cfg *conf.Config, groups []conf.Group, timeout time.Duration,
	sys system, stderr io.Writer) error {
	ln, err := listen(o.listen)
	if err != nil {
		return err
	}
	c, err := startEngine(cfg, groups, timeout, sys, stderr)
	if err != nil {
		ln.Close()
		return err
	}
	x := newExporter(c, c.eng.Groups(), c.eng.Timeout(), exporterInfo{config: cfg.File, module: cfg.ModulePath}, sys.now)
	return serveMetrics(ctx, ln, x, stderr)
}
