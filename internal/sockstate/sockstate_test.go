package sockstate

import (
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/pkg/conf"
)

// server accepts connections on a listener and keeps them until closed.
type server struct {
	ln    net.Listener
	conns chan net.Conn
}

func serve(t *testing.T, network, address string) *server {
	t.Helper()
	ln, err := net.Listen(network, address)
	require.NoError(t, err)
	s := &server{ln: ln, conns: make(chan net.Conn, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

func check(c *Checker, eps ...conf.Endpoint) []bool {
	healthy := make([]bool, len(eps))
	c.Check(eps, healthy)
	return healthy
}

func TestUnixConnectionHealthAndHangUp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.sock")
	srv := serve(t, "unix", path)
	ep := conf.Endpoint{Network: "unix", Address: path}
	other := conf.Endpoint{Network: "unix", Address: path + ".other"}
	c := NewChecker([]conf.Endpoint{ep, other}, time.Second)

	assert.Equal(t, []bool{false, false}, check(c, ep, other), "no connection: missing")
	client, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer client.Close()
	peer := <-srv.conns
	assert.Equal(t, []bool{true, false}, check(c, ep, other), "a live connection is healthy")
	// Signals (the Go runtime preempts goroutines with SIGURG) interrupt
	// poll with EINTR: they must not make a healthy connection flap.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = syscall.Kill(os.Getpid(), syscall.SIGURG)
			}
		}
	}()
	for i := 0; i < 5000; i++ {
		if h := check(c, ep); !h[0] {
			close(stop)
			t.Fatalf("check %d: healthy connection reported down", i)
		}
	}
	close(stop)
	peer.Close()
	require.Eventually(t, func() bool { return !check(c, ep)[0] }, time.Second, 10*time.Millisecond,
		"the member hung up")
	buf := make([]byte, 1)
	client.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, err = client.Read(buf)
	assert.Error(t, err, "the checker read nothing: the hang-up is still there for the owner")
}

func TestConcurrentChecksShareAScan(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.sock")
	srv := serve(t, "unix", path)
	ep := conf.Endpoint{Network: "unix", Address: path}
	c := NewChecker([]conf.Endpoint{ep, ep}, time.Second)
	assert.Len(t, c.eps, 1, "duplicates are scanned once")
	client, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer client.Close()
	peer := <-srv.conns // kept: a dropped net.Conn is closed by its finalizer
	defer peer.Close()
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 200; k++ {
				if h := check(c, ep); !h[0] {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, bad.Load(), "every concurrent check sees the healthy connection")
}

// The descriptor that proved an endpoint healthy is asked first next time;
// once it is closed and its number reused for another endpoint, it must not
// vouch for the first.
func TestRememberedDescriptorIsVerified(t *testing.T) {
	dir := t.TempDir()
	pathA, pathB := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	srvA, srvB := serve(t, "unix", pathA), serve(t, "unix", pathB)
	a := conf.Endpoint{Network: "unix", Address: pathA}
	b := conf.Endpoint{Network: "unix", Address: pathB}
	c := NewChecker([]conf.Endpoint{a, b}, time.Second)

	ca, err := net.Dial("unix", pathA)
	require.NoError(t, err)
	peerA := <-srvA.conns
	defer peerA.Close()
	assert.Equal(t, []bool{true, false}, check(c, a, b))
	fdA := c.known[0]
	require.GreaterOrEqual(t, fdA, 0, "the healthy descriptor is remembered")

	require.NoError(t, ca.Close())
	cb, err := net.Dial("unix", pathB)
	require.NoError(t, err)
	defer cb.Close()
	peerB := <-srvB.conns
	defer peerB.Close()
	assert.Equal(t, []bool{false, true}, check(c, a, b), "descriptor %d now leads to b", fdA)
}

func TestTCPConnection(t *testing.T) {
	srv := serve(t, "tcp", "127.0.0.1:0")
	addr := srv.ln.Addr().String()
	ep := conf.Endpoint{Network: "tcp", Address: addr}
	c := NewChecker([]conf.Endpoint{ep}, time.Second)
	client, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer client.Close()
	peer := <-srv.conns
	assert.Equal(t, []bool{true}, check(c, ep))
	peer.Close()
	require.Eventually(t, func() bool { return !check(c, ep)[0] }, time.Second, 10*time.Millisecond,
		"FIN from the member: not ESTABLISHED")
}

func TestHostNamesAreResolvedOnce(t *testing.T) {
	srv := serve(t, "tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(srv.ln.Addr().String())
	byName := conf.Endpoint{Network: "tcp", Address: "localhost:" + port}
	c := NewChecker([]conf.Endpoint{byName}, 2*time.Second)
	client, err := net.Dial("tcp", srv.ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	peer := <-srv.conns
	defer peer.Close()
	assert.Equal(t, []bool{true}, check(c, byName))

	assert.Equal(t, []bool{false}, check(NewChecker(nil, time.Second), byName),
		"an endpoint the Checker was not prepared for is down: no look-up inside a check")
}
