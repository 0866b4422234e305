package probe

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

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

func sockCheck(c *sockChecker, eps ...conf.Endpoint) []bool {
	healthy, _ := sockCheckFds(c, eps...)
	return healthy
}

func sockCheckFds(c *sockChecker, eps ...conf.Endpoint) ([]bool, []int) {
	healthy, fds := make([]bool, len(eps)), make([]int, len(eps))
	for i := range fds {
		fds[i] = -2 // Check must set every entry
	}
	c.Check(eps, healthy, fds)
	return healthy, fds
}

// rawFd returns the descriptor under conn.
func rawFd(t *testing.T, conn net.Conn) int {
	t.Helper()
	sc, err := conn.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	fd := -1
	require.NoError(t, sc.Control(func(f uintptr) { fd = int(f) }))
	return fd
}

func TestCheckNamesTheDescriptorOfTheHealthyConnection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.sock")
	srv := serve(t, "unix", path)
	ep := conf.Endpoint{Network: "unix", Address: path}
	other := conf.Endpoint{Network: "unix", Address: path + ".other"}
	c := newSockChecker([]conf.Endpoint{ep, other}, time.Second)

	healthy, fds := sockCheckFds(c, ep, other)
	assert.Equal(t, []bool{false, false}, healthy)
	assert.Equal(t, []int{-1, -1}, fds, "no connection: no descriptor")

	client, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer client.Close()
	peer := <-srv.conns
	healthy, fds = sockCheckFds(c, ep, other)
	assert.Equal(t, []bool{true, false}, healthy)
	assert.Equal(t, []int{rawFd(t, client), -1}, fds, "the client's descriptor, found by the walk")
	healthy, fds = sockCheckFds(c, ep, other)
	assert.Equal(t, []bool{true, false}, healthy)
	assert.Equal(t, []int{rawFd(t, client), -1}, fds, "the same descriptor, confirmed again")

	require.NoError(t, peer.Close())
	require.Eventually(t, func() bool {
		healthy, fds = sockCheckFds(c, ep, other)
		return !healthy[0]
	}, 2*time.Second, 10*time.Millisecond)
	assert.Equal(t, []int{-1, -1}, fds, "a hung-up connection names no descriptor")
}

func TestUnixConnectionHealthAndHangUp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.sock")
	srv := serve(t, "unix", path)
	ep := conf.Endpoint{Network: "unix", Address: path}
	other := conf.Endpoint{Network: "unix", Address: path + ".other"}
	c := newSockChecker([]conf.Endpoint{ep, other}, time.Second)

	assert.Equal(t, []bool{false, false}, sockCheck(c, ep, other), "no connection: missing")
	client, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer client.Close()
	peer := <-srv.conns
	assert.Equal(t, []bool{true, false}, sockCheck(c, ep, other), "a live connection is healthy")
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
		if h := sockCheck(c, ep); !h[0] {
			close(stop)
			t.Fatalf("check %d: healthy connection reported down", i)
		}
	}
	close(stop)
	peer.Close()
	require.Eventually(t, func() bool { return !sockCheck(c, ep)[0] }, time.Second, 10*time.Millisecond,
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
	c := newSockChecker([]conf.Endpoint{ep, ep}, time.Second)
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
				if h := sockCheck(c, ep); !h[0] {
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
	c := newSockChecker([]conf.Endpoint{a, b}, time.Second)

	ca, err := net.Dial("unix", pathA)
	require.NoError(t, err)
	peerA := <-srvA.conns
	defer peerA.Close()
	assert.Equal(t, []bool{true, false}, sockCheck(c, a, b))
	fdA := c.knownFd(0)
	require.GreaterOrEqual(t, fdA, 0, "the healthy descriptor is remembered")

	require.NoError(t, ca.Close())
	cb, err := net.Dial("unix", pathB)
	require.NoError(t, err)
	defer cb.Close()
	peerB := <-srvB.conns
	defer peerB.Close()
	assert.Equal(t, []bool{false, true}, sockCheck(c, a, b), "descriptor %d now leads to b", fdA)
}

func TestTCPConnection(t *testing.T) {
	srv := serve(t, "tcp", "127.0.0.1:0")
	addr := srv.ln.Addr().String()
	ep := conf.Endpoint{Network: "tcp", Address: addr}
	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	client, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer client.Close()
	peer := <-srv.conns
	assert.Equal(t, []bool{true}, sockCheck(c, ep))
	peer.Close()
	require.Eventually(t, func() bool { return !sockCheck(c, ep)[0] }, time.Second, 10*time.Millisecond,
		"FIN from the member: not ESTABLISHED")
}

func TestHostNamesAreResolvedOnce(t *testing.T) {
	srv := serve(t, "tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(srv.ln.Addr().String())
	byName := conf.Endpoint{Network: "tcp", Address: "localhost:" + port}
	c := newSockChecker([]conf.Endpoint{byName}, 2*time.Second)
	client, err := net.Dial("tcp", srv.ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	peer := <-srv.conns
	defer peer.Close()
	assert.Equal(t, []bool{true}, sockCheck(c, byName))

	assert.Equal(t, []bool{false}, sockCheck(newSockChecker(nil, time.Second), byName),
		"an endpoint the checker was not prepared for is down: no look-up inside a check")
}

// The TCP branch, on real loopback connections: what the kernel says about
// a member's connection in each state it can be in, and that judging it
// takes nothing away from the module that owns it.

// TCP states from include/net/tcp_states.h.
const (
	stateEstablished = 1
	stateFinWait2    = 5
	stateClose       = 7
	stateCloseWait   = 8
)

// tcpPair is a client connection (the vendor module's) and the member's
// end of it.
func tcpPair(t *testing.T, network, address string) (client, peer net.Conn, ep conf.Endpoint) {
	t.Helper()
	srv := serve(t, network, address)
	addr := srv.ln.Addr().String()
	client, err := net.Dial(network, addr)
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	peer = <-srv.conns
	t.Cleanup(func() { peer.Close() })
	return client, peer, conf.Endpoint{Network: "tcp", Address: addr}
}

// tcpState is the kernel's TCP state of the connection (tcpi_state).
func tcpState(t *testing.T, c net.Conn) uint8 {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	var state uint8
	require.NoError(t, raw.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		require.NoError(t, err)
		state = info.State
	}))
	return state
}

// buffered is how many bytes wait unread in the connection's receive queue.
func buffered(t *testing.T, c net.Conn) int {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	n := 0
	require.NoError(t, raw.Control(func(fd uintptr) {
		n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		require.NoError(t, err)
	}))
	return n
}

func TestTCPEstablishedKeepsUnreadData(t *testing.T) {
	client, peer, ep := tcpPair(t, "tcp", "127.0.0.1:0")
	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	_, err := peer.Write([]byte("reply"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return buffered(t, client) == 5 }, time.Second, time.Millisecond)

	require.Equal(t, uint8(stateEstablished), tcpState(t, client))
	assert.Equal(t, []bool{true}, sockCheck(c, ep), "ESTABLISHED with a reply waiting: healthy")
	assert.Equal(t, 5, buffered(t, client), "the check read nothing")
	buf := make([]byte, 16)
	n, err := client.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "reply", string(buf[:n]), "the owner reads the reply intact")
}

func TestTCPPeerClosedIsCloseWait(t *testing.T) {
	client, peer, ep := tcpPair(t, "tcp", "127.0.0.1:0")
	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	require.Equal(t, []bool{true}, sockCheck(c, ep))

	require.NoError(t, peer.Close()) // FIN: the member's server went away
	require.Eventually(t, func() bool { return tcpState(t, client) == stateCloseWait }, time.Second, time.Millisecond)
	assert.Equal(t, []bool{false}, sockCheck(c, ep), "CLOSE_WAIT: down")
	client.SetReadDeadline(time.Now().Add(time.Second))
	_, err := client.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "the end of the stream is still there for the owner")
}

func TestTCPResetLeavesTheErrorToTheOwner(t *testing.T) {
	client, peer, ep := tcpPair(t, "tcp", "127.0.0.1:0")
	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	require.Equal(t, []bool{true}, sockCheck(c, ep))

	// SO_LINGER 0: close sends RST, as a server killed with unread data does.
	require.NoError(t, peer.(*net.TCPConn).SetLinger(0))
	require.NoError(t, peer.Close())
	require.Eventually(t, func() bool { return tcpState(t, client) == stateClose }, time.Second, time.Millisecond)
	for i := 0; i < 3; i++ {
		assert.Equal(t, []bool{false}, sockCheck(c, ep), "reset: down (check %d)", i)
	}
	client.SetReadDeadline(time.Now().Add(time.Second))
	_, err := client.Read(make([]byte, 1))
	assert.ErrorIs(t, err, syscall.ECONNRESET,
		"the pending error is still the owner's to read: the check did not consume it (SO_ERROR would)")
}

func TestTCPOwnShutdownIsDown(t *testing.T) {
	client, _, ep := tcpPair(t, "tcp", "127.0.0.1:0")
	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	require.Equal(t, []bool{true}, sockCheck(c, ep))
	require.NoError(t, client.(*net.TCPConn).CloseWrite())
	require.Eventually(t, func() bool { return tcpState(t, client) == stateFinWait2 }, time.Second, time.Millisecond)
	assert.Equal(t, []bool{false}, sockCheck(c, ep), "the module is closing its connection: FIN_WAIT2 is not usable")
}

func TestTCPOverIPv6Loopback(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback on this machine: %v", err)
	}
	ln.Close()
	client, peer, ep := tcpPair(t, "tcp6", "[::1]:0")
	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	assert.Equal(t, []bool{true}, sockCheck(c, ep))
	peer.Close()
	require.Eventually(t, func() bool { return tcpState(t, client) == stateCloseWait }, time.Second, time.Millisecond)
	assert.Equal(t, []bool{false}, sockCheck(c, ep))
}

// A TLS member is judged by the TCP connection under it: the check sees
// neither records nor alerts, and takes none of them.
func TestTLSIsJudgedByTheTCPUnderIt(t *testing.T) {
	cert := selfSigned(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	require.NoError(t, err)
	defer ln.Close()
	peers := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil && c.(*tls.Conn).Handshake() == nil {
			peers <- c
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	client, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "member"})
	require.NoError(t, err)
	defer client.Close()
	peer := <-peers
	defer peer.Close()
	_, err = peer.Write([]byte("record"))
	require.NoError(t, err)

	ep := conf.Endpoint{Network: "tcp", Address: ln.Addr().String()}
	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	time.Sleep(20 * time.Millisecond)
	assert.Equal(t, []bool{true}, sockCheck(c, ep), "TLS session up: healthy")
	buf := make([]byte, 16)
	n, err := client.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "record", string(buf[:n]), "the TLS record is intact for the owner")

	require.NoError(t, peer.Close()) // close_notify, then FIN
	require.Eventually(t, func() bool { return !sockCheck(c, ep)[0] }, time.Second, time.Millisecond,
		"the member closed the TLS session: down")
}

// selfSigned makes a certificate for the name "member".
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "member"},
		DNSNames:     []string{"member"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// A link-local member is configured with its zone; the kernel reports the
// peer without a zone name. The address and port decide.
func TestLinkLocalZoneDoesNotMatter(t *testing.T) {
	ep := conf.Endpoint{Network: "tcp", Address: "[fe80::1%lo]:1792"}
	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	peer := &unix.SockaddrInet6{Port: 1792, ZoneId: 1, Addr: netip.MustParseAddr("fe80::1").As16()}
	assert.True(t, c.matches(peer, ep), "fe80::1 on port 1792 is the member")
	peer.Port = 1793
	assert.False(t, c.matches(peer, ep), "another port is not")
}

// fakeResolver answers look-ups from a table, counting them.
type fakeResolver struct {
	mu    sync.Mutex
	addrs []netip.Addr // nil: the look-up fails
	calls int
}

func (r *fakeResolver) lookup(_ context.Context, _, _ string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.addrs == nil {
		return nil, errors.New("resolver unreachable")
	}
	return r.addrs, nil
}

func (r *fakeResolver) set(addrs ...netip.Addr) {
	r.mu.Lock()
	r.addrs = addrs
	r.mu.Unlock()
}

func (r *fakeResolver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

// A host name that did not resolve when the library started (the resolver
// was not up yet, say) must not leave its member down for the life of the
// process while the vendor module is connected to it; nor may a check wait
// for the resolver, or ask it on every call.
func TestUnresolvedNameIsLookedUpAgainInTheBackground(t *testing.T) {
	res := &fakeResolver{}
	defer func(old func(context.Context, string, string) ([]netip.Addr, error)) { lookupNetIP = old }(lookupNetIP)
	lookupNetIP = res.lookup
	client, peer, live := tcpPair(t, "tcp", "127.0.0.1:0")
	defer client.Close()
	defer peer.Close()
	_, port, _ := net.SplitHostPort(live.Address)
	ep := conf.Endpoint{Network: "tcp", Address: "hsm.example:" + port}

	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	c.relookup = 50 * time.Millisecond
	require.Equal(t, 1, res.count(), "looked up once at start")
	start := time.Now()
	for i := 0; i < 200; i++ {
		assert.Equal(t, []bool{false}, sockCheck(c, ep), "no address: no connection matches")
	}
	assert.Less(t, time.Since(start), 500*time.Millisecond, "checks do not wait for the resolver")
	assert.LessOrEqual(t, res.count(), 1+int(time.Since(start)/c.relookup)+1,
		"at most one look-up per interval, however many checks")

	res.set(netip.MustParseAddr("127.0.0.1"))
	require.Eventually(t, func() bool { return sockCheck(c, ep)[0] }, 2*time.Second, 5*time.Millisecond,
		"once the name resolves, the connection counts")
	n := res.count()
	for i := 0; i < 50; i++ {
		sockCheck(c, ep)
	}
	time.Sleep(2 * c.relookup)
	sockCheck(c, ep)
	assert.Equal(t, n, res.count(), "a healthy endpoint is not looked up again")
}

// An address literal needs no resolver, ever.
func TestAddressLiteralsAreNeverLookedUp(t *testing.T) {
	res := &fakeResolver{}
	defer func(old func(context.Context, string, string) ([]netip.Addr, error)) { lookupNetIP = old }(lookupNetIP)
	lookupNetIP = res.lookup
	ep := conf.Endpoint{Network: "tcp", Address: "127.0.0.1:9"}
	c := newSockChecker([]conf.Endpoint{ep}, time.Second)
	c.relookup = time.Millisecond
	for i := 0; i < 20; i++ {
		sockCheck(c, ep)
		time.Sleep(time.Millisecond)
	}
	assert.Zero(t, res.count())
}
