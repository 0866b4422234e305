package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/internal/fakep11"
	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var servingLine = regexp.MustCompile(`hastatus: serving http://([0-9.:]+)/metrics`)

// exporterRun is hastatus --listen running in the test's process.
type exporterRun struct {
	base   string // http://127.0.0.1:PORT
	stderr *syncBuffer
	cancel context.CancelFunc
	code   chan int
	exited bool
	status int
}

// stop interrupts it and returns its exit status.
func (e *exporterRun) stop(t *testing.T) int {
	t.Helper()
	e.cancel()
	if e.exited {
		return e.status
	}
	select {
	case e.status = <-e.code:
		e.exited = true
		return e.status
	case <-time.After(10 * time.Second):
		t.Fatal("hastatus --listen did not stop when interrupted")
		return -1
	}
}

// startExporter runs hastatus --listen 127.0.0.1:0 with args over the
// configuration in dir, the module opened with open, and waits until it
// serves.
func startExporter(t *testing.T, dir string, open func(string) (*cryptoki.Module, error), args ...string) *exporterRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e := &exporterRun{stderr: &syncBuffer{}, cancel: cancel, code: make(chan int, 1)}
	go func() {
		e.code <- run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...), io.Discard, e.stderr, system{
			getenv: func(k string) string {
				if k == "ChrystokiConfigurationPath" {
					return dir
				}
				return ""
			},
			exists:     func(p string) bool { _, err := os.Stat(p); return err == nil },
			openModule: open,
			now:        time.Now,
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := servingLine.FindStringSubmatch(e.stderr.String()); m != nil {
			e.base = "http://" + m[1]
			break
		}
		select {
		case code := <-e.code:
			cancel()
			t.Fatalf("hastatus --listen exited %d before serving: %s", code, e.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("hastatus --listen does not serve: %s", e.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() { e.stop(t) })
	return e
}

// get fetches a path and returns the status code and the body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// metrics is one scrape: each sample's value by its name and labels as
// the text format writes them (name{label="value",...}).
type metrics map[string]float64

// scrape fetches /metrics and says how long it took.
func scrape(t *testing.T, base string) (metrics, string, time.Duration) {
	t.Helper()
	t0 := time.Now()
	code, body := get(t, base+"/metrics")
	took := time.Since(t0)
	require.Equal(t, http.StatusOK, code, body)
	m := metrics{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		require.Positive(t, i, "a sample line: %q", line)
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, line)
		m[line[:i]] = v
	}
	return m, body, took
}

func upKey(group, member string) string {
	return fmt.Sprintf(`haext_member_up{group=%q,member=%q}`, group, member)
}

func statusKey(group, member, status string) string {
	return fmt.Sprintf(`haext_member_status{group=%q,member=%q,status=%q}`, group, member, status)
}

func TestExporterOverSoftHSM2(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "payments", "1000001", serials...)+group(1, "", "77", serials[0], missing),
		"HAConfiguration = {\n statusTimeout = 2;\n}\n")
	e := startExporter(t, dir, cryptoki.Open)

	m, body, took := scrape(t, e.base)
	assert.Less(t, took, 2*time.Second+checkGrace)
	for _, s := range serials {
		assert.Equal(t, 1.0, m[upKey("payments", s)], "%s up:\n%s", s, body)
		assert.Contains(t, m, statusKey("payments", s, "CKR_OK"))
		assert.Equal(t, 0.0, m[statusKey("payments", s, "CKR_OK")])
		assert.Contains(t, m, fmt.Sprintf(`haext_member_check_duration_seconds{group="payments",member=%q}`, s))
	}
	// The group without a label is named by its serial; its missing member
	// is down, with no instance.
	assert.Equal(t, 1.0, m[upKey("77", serials[0])], body)
	assert.Equal(t, 0.0, m[upKey("77", missing)], body)
	assert.Equal(t, float64(0xC8410001), m[statusKey("77", missing, "CKR_HA_NO_INSTANCE")], body)
	assert.Equal(t, 1.0, m[fmt.Sprintf(`haext_config_info{config=%q,groups="payments,77",module=%q,status_timeout="2"}`,
		dir+"/Chrystoki.conf", softhsm)], body)
	assert.Equal(t, 2.0, m["haext_status_timeout_seconds"])
	assert.Equal(t, 1.0, m["haext_checks_total"])
	assert.Equal(t, 1.0, m[`haext_check_duration_seconds_count{group="payments"}`], body)
	assert.Equal(t, 1.0, m[`haext_check_duration_seconds_bucket{group="payments",le="2"}`], "within statusTimeout")
	assert.InDelta(t, float64(time.Now().Unix()), m["haext_last_check_timestamp_seconds"], 5)
	assert.Contains(t, m, "process_resident_memory_bytes")
	assert.Contains(t, m, "go_goroutines")
	assert.Contains(t, body, "# TYPE haext_check_duration_seconds histogram")
	assert.Contains(t, body, "# HELP haext_member_up ")
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	assert.NoError(t, err)
	assert.Empty(t, problems, "the metrics follow Prometheus's naming rules")

	m, _, _ = scrape(t, e.base)
	assert.Equal(t, 2.0, m["haext_checks_total"], "one check per scrape")
	assert.Equal(t, 1.0, m[upKey("payments", serials[1])])

	code, page := get(t, e.base+"/")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, `href="/metrics"`)
	code, page = get(t, e.base+"/healthz")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ok\n", page)
	code, _ = get(t, e.base+"/nosuch")
	assert.Equal(t, http.StatusNotFound, code)

	assert.Equal(t, exitAlive, e.stop(t), "interrupted: exit status 0")
	assert.Regexp(t, `(?m)^hastatus: serving http://127\.0\.0\.1:\d+/metrics \(statusTimeout 2s\)$`, e.stderr.String())
}

func TestExporterFlagErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	dir := writeConf(t, softhsm, group(0, "g", "1", serials[0]), "")
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"no port":      {[]string{"--listen", "localhost"}, `--listen "localhost": address localhost: missing port in address; use HOST:PORT`},
		"bad port":     {[]string{"--listen", "127.0.0.1:99999"}, `port "99999" is not a number from 0 to 65535`},
		"empty port":   {[]string{"--listen", "127.0.0.1:"}, "no port"},
		"with --json":  {[]string{"--listen", "127.0.0.1:0", "--json"}, "--listen serves Prometheus metrics and cannot be combined with --json"},
		"with --watch": {[]string{"--watch", "1s", "--listen", "127.0.0.1:0"}, "cannot be combined with --watch"},
		"port in use":  {[]string{"--listen", busy.Addr().String()}, "--listen " + busy.Addr().String() + ": listen tcp " + busy.Addr().String() + ": bind: address already in use"},
		"no address":   {[]string{"--listen", "192.0.2.1:9464"}, "bind: cannot assign requested address"},
	} {
		t0 := time.Now()
		code, out, errOut := hastatus(t, dir, c.args...)
		assert.Equal(t, exitError, code, name)
		assert.Empty(t, out, name)
		assert.Equal(t, 1, strings.Count(errOut, "\n"), "%s: one line on stderr: %q", name, errOut)
		assert.Contains(t, errOut, c.want, name)
		assert.Less(t, time.Since(t0), time.Second, "%s: before the module is loaded", name)
	}
}

// fakeConf writes a configuration of one group, "fake", of the fake's first
// n tokens, with statusTimeout = 1.
func fakeConf(t *testing.T, f *fakep11.Module, n int) (dir string, members []string) {
	t.Helper()
	g := f.Group("fake", 4242, n)
	for _, m := range g.Members {
		members = append(members, m.SerialText)
	}
	return writeConf(t, softhsm, group(0, "fake", "4242", members...), "HAConfiguration = {\n statusTimeout = 1;\n}\n"), members
}

func openFake(string) (*cryptoki.Module, error) { return cryptoki.Attach(fakep11.List()) }

// A member that hangs: the scrape is answered at statusTimeout with the
// member CKR_HA_TIMEOUT and down; the next scrapes at once, without asking
// the member again; once it answers, it is up again.
func TestExporterServesWhileAMemberHangs(t *testing.T) {
	const timeout = time.Second
	f := fakep11.New(3)
	dir, members := fakeConf(t, f, 3)
	e := startExporter(t, dir, openFake)
	m, body, _ := scrape(t, e.base)
	for _, s := range members {
		require.Equal(t, 1.0, m[upKey("fake", s)], body)
	}

	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free()
	asked := f.Token(11).Infos.Load()
	f.Update(11, func(s *fakep11.Script) { s.Hang = release })

	m, body, took := scrape(t, e.base)
	assert.GreaterOrEqual(t, took, timeout-50*time.Millisecond, "waits for the member until statusTimeout")
	assert.Less(t, took, timeout+500*time.Millisecond, "and no longer")
	assert.Equal(t, 0.0, m[upKey("fake", members[1])], body)
	assert.Equal(t, 3359703043.0, m[statusKey("fake", members[1], "CKR_HA_TIMEOUT")], body)
	assert.Equal(t, 1.0, m[upKey("fake", members[0])], body)
	assert.Equal(t, 1.0, m[upKey("fake", members[2])], body)
	assert.Equal(t, 1.0, m[`haext_check_duration_seconds_count{group="fake"}`]-
		m[`haext_check_duration_seconds_bucket{group="fake",le="1"}`], "the check that ran into the deadline: %s", body)

	for i := 0; i < 3; i++ {
		m, _, took = scrape(t, e.base)
		assert.Less(t, took, 300*time.Millisecond, "a member stuck past statusTimeout is reported at once")
		assert.Equal(t, 0.0, m[upKey("fake", members[1])])
		assert.Contains(t, m, statusKey("fake", members[1], "CKR_HA_TIMEOUT"))
	}
	assert.Equal(t, asked+1, f.Token(11).Infos.Load(), "one call to the hung member, never a second")
	assert.Equal(t, 0.0, m["haext_stale_scrapes_total"])

	free()
	require.Eventually(t, func() bool {
		m, _, _ := scrape(t, e.base)
		return m[upKey("fake", members[1])] == 1 && m[statusKey("fake", members[1], "CKR_OK")] == 0
	}, 3*time.Second, 50*time.Millisecond, "up again once the member answers")
	assert.Equal(t, exitAlive, e.stop(t))
}

// Two scrapes at once share one check: each member is asked once.
func TestExporterConcurrentScrapesShareOneCheck(t *testing.T) {
	f := fakep11.New(3)
	dir, members := fakeConf(t, f, 3)
	e := startExporter(t, dir, openFake)
	m, _, _ := scrape(t, e.base)
	require.Equal(t, 1.0, m["haext_checks_total"])
	const latency = 400 * time.Millisecond
	var asked []int32
	for slot := uint(10); slot < 13; slot++ {
		f.Update(slot, func(s *fakep11.Script) { s.Latency = latency })
		asked = append(asked, f.Token(slot).Infos.Load())
	}

	type answer struct {
		m    metrics
		took time.Duration
	}
	answers := make(chan answer, 2)
	for i := 0; i < 2; i++ {
		go func() {
			m, _, took := scrape(t, e.base)
			answers <- answer{m, took}
		}()
		time.Sleep(100 * time.Millisecond) // the second comes while the first's check runs
	}
	a, b := <-answers, <-answers
	for _, x := range []answer{a, b} {
		assert.Equal(t, 2.0, x.m["haext_checks_total"], "one check for both scrapes")
		assert.Less(t, x.took, latency+500*time.Millisecond)
		for _, s := range members {
			assert.Equal(t, 1.0, x.m[upKey("fake", s)])
		}
	}
	assert.Equal(t, a.m["haext_last_check_timestamp_seconds"], b.m["haext_last_check_timestamp_seconds"],
		"both scrapes got the same check")
	for i, slot := 0, uint(10); slot < 13; i, slot = i+1, slot+1 {
		assert.Equal(t, asked[i]+1, f.Token(slot).Infos.Load(), "slot %d asked once", slot)
	}
	assert.Equal(t, exitAlive, e.stop(t))
}

// Label values are UTF-8: a group label with a byte that is not gets
// U+FFFD there, and the scrape still succeeds.
func TestExporterLabelsAreUTF8(t *testing.T) {
	dir := writeConf(t, softhsm, group(0, "pay\xffments", "1", serials[0]), "")
	e := startExporter(t, dir, cryptoki.Open)
	m, body, _ := scrape(t, e.base)
	assert.Equal(t, 1.0, m[upKey("pay\uFFFDments", serials[0])], body)
	assert.Equal(t, exitAlive, e.stop(t))
}
