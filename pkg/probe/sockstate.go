package probe

// Stage 2: whether this process holds a healthy connection to a member's
// network endpoint. The connection is found by scanning the process's own
// descriptors (/proc/self/fd) for sockets whose peer is the endpoint, and
// judged with read-only system calls only: nothing here reads from, writes
// to or closes a descriptor, which belongs to the vendor module.

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/libhaext/libhaext/pkg/conf"
)

// fdDir lists this process's descriptors.
const fdDir = "/proc/self/fd"

// tcpEstablished is TCP_ESTABLISHED, the tcpi_state of a usable connection.
const tcpEstablished = 1

// defaultRelookup is the least time between two background look-ups of a
// host name whose endpoint has no healthy connection.
const defaultRelookup = 5 * time.Second

// lookupNetIP resolves host names (the system resolver; tests replace it).
var lookupNetIP = net.DefaultResolver.LookupNetIP

// sockChecker reports on the endpoints it was prepared for. TCP host names
// are resolved by newSockChecker; a name whose endpoint then has no healthy
// connection (it did not resolve at start, or the member moved) is looked up
// again in the background, at most once per relookup interval, and never
// inside a check. Concurrent checks share one scan of the descriptors: a
// check that arrives while a scan is in flight waits for it rather than
// making its own, as concurrent status calls share a member's lightweight
// call.
type sockChecker struct {
	eps   []conf.Endpoint       // prepared, without duplicates
	index map[conf.Endpoint]int // endpoint -> position in eps
	tcp   map[string]*target    // endpoint address -> where it leads

	lookupTimeout time.Duration // budget of one look-up
	relookup      time.Duration // least time between two look-ups of a name

	mu      sync.Mutex
	current *scan // the scan in flight, if any

	// known[j] is the descriptor that last proved eps[j] healthy, or -1.
	// Only the scan in flight uses it, and scans run one at a time.
	known []int
}

// target is where a TCP endpoint's connections lead: the addresses its host
// resolved to, with the port.
type target struct {
	host  string // the name to look up again; empty for an address literal
	port  uint16
	peers atomic.Pointer[[]netip.AddrPort]

	mu     sync.Mutex
	busy   bool      // a look-up is in flight
	looked time.Time // when the last look-up started
}

// scan is one pass over the descriptors: the health of every prepared
// endpoint, and the descriptor that proved it (-1 for none).
type scan struct {
	done    chan struct{}
	healthy []bool
	fds     []int
}

// newSockChecker prepares a sockChecker for the endpoints, resolving TCP
// host names with the system resolver within timeout. A name that does not
// resolve matches no socket, so its member is reported with its socket down
// until a later look-up succeeds.
func newSockChecker(eps []conf.Endpoint, timeout time.Duration) *sockChecker {
	c := &sockChecker{index: make(map[conf.Endpoint]int), tcp: make(map[string]*target),
		lookupTimeout: timeout, relookup: defaultRelookup}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, ep := range eps {
		if _, dup := c.index[ep]; dup {
			continue
		}
		c.index[ep] = len(c.eps)
		c.eps = append(c.eps, ep)
		c.known = append(c.known, -1)
		if ep.Network != "tcp" {
			continue
		}
		if _, done := c.tcp[ep.Address]; done {
			continue
		}
		c.tcp[ep.Address] = newTarget(ctx, ep.Address)
	}
	return c
}

// newTarget parses host:port; a host that is not an address literal is
// looked up now, within ctx.
func newTarget(ctx context.Context, address string) *target {
	t := &target{}
	none := []netip.AddrPort(nil)
	t.peers.Store(&none)
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return t
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return t
	}
	t.port = uint16(port)
	if ip, err := netip.ParseAddr(host); err == nil {
		// The kernel reports a peer without a zone name: the address and
		// the port decide.
		peers := []netip.AddrPort{netip.AddrPortFrom(ip.Unmap().WithZone(""), t.port)}
		t.peers.Store(&peers)
		return t
	}
	t.host = host
	t.looked = time.Now()
	t.lookup(ctx)
	return t
}

// lookup resolves the target's host; a failed look-up keeps the addresses
// known so far.
func (t *target) lookup(ctx context.Context) {
	ips, err := lookupNetIP(ctx, "ip", t.host)
	if err != nil || len(ips) == 0 {
		return
	}
	peers := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		peers = append(peers, netip.AddrPortFrom(ip.Unmap().WithZone(""), t.port))
	}
	t.peers.Store(&peers)
}

// relookupLater starts a background look-up of the target's host unless it
// is an address literal, one is in flight, or the last one started less
// than every ago.
func (t *target) relookupLater(every, timeout time.Duration) {
	if t.host == "" {
		return
	}
	t.mu.Lock()
	if t.busy || time.Since(t.looked) < every {
		t.mu.Unlock()
		return
	}
	t.busy = true
	t.looked = time.Now()
	t.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		t.lookup(ctx)
		t.mu.Lock()
		t.busy = false
		t.mu.Unlock()
	}()
}

// Check sets healthy[i] when this process holds at least one healthy
// connection to eps[i], and fds[i] to the descriptor of one such
// connection (-1 when none). An endpoint the checker was not prepared for
// is reported down.
func (c *sockChecker) Check(eps []conf.Endpoint, healthy []bool, fds []int) {
	s := c.shared()
	for i, ep := range eps {
		j, ok := c.index[ep]
		healthy[i], fds[i] = ok && s.healthy[j], -1
		if healthy[i] {
			fds[i] = s.fds[j]
		}
	}
}

// shared returns the scan in flight, once it has ended, or a new scan when
// none is.
func (c *sockChecker) shared() *scan {
	c.mu.Lock()
	if s := c.current; s != nil {
		c.mu.Unlock()
		<-s.done
		return s
	}
	s := &scan{done: make(chan struct{})}
	c.current = s
	c.mu.Unlock()
	s.healthy = c.scan()
	s.fds = append([]int(nil), c.known...)
	c.mu.Lock()
	c.current = nil
	c.mu.Unlock()
	close(s.done)
	return s
}

// scan first asks again the descriptors that last proved each endpoint
// healthy (their peer is checked, so a reused descriptor does not count),
// and looks at every descriptor of the process only when that leaves an
// endpoint unconfirmed.
func (c *sockChecker) scan() []bool {
	healthy := make([]bool, len(c.eps))
	if c.confirm(healthy) < len(c.eps) {
		c.walk(healthy)
		for j, ep := range c.eps {
			if !healthy[j] && ep.Network == "tcp" {
				c.tcp[ep.Address].relookupLater(c.relookup, c.lookupTimeout)
			}
		}
	}
	return healthy
}

// confirm asks again the descriptors that last proved each endpoint
// healthy: each one's peer, so that a reused descriptor does not count,
// then one poll for all of them. It returns how many it confirmed.
func (c *sockChecker) confirm(healthy []bool) int {
	pfds := make([]unix.PollFd, 0, len(c.eps))
	at := make([]int, 0, len(c.eps))
	for j, ep := range c.eps {
		fd := c.known[j]
		if fd < 0 {
			continue
		}
		if peer, err := unix.Getpeername(fd); err != nil || !c.matches(peer, ep) {
			c.known[j] = -1
			continue
		}
		pfds = append(pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLRDHUP})
		at = append(at, j)
	}
	ok := pollNow(pfds)
	confirmed := 0
	for k, j := range at {
		if !ok || hungUp(pfds[k].Revents) || (c.eps[j].Network == "tcp" && !established(c.known[j])) {
			c.known[j] = -1
			continue
		}
		healthy[j] = true
		confirmed++
	}
	return confirmed
}

// walk looks at every descriptor of the process for the endpoints not yet
// healthy.
func (c *sockChecker) walk(healthy []bool) {
	dir, err := os.Open(fdDir)
	if err != nil {
		return
	}
	names, err := dir.Readdirnames(-1)
	own := int(dir.Fd())
	_ = dir.Close()
	if err != nil {
		return
	}
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd == own {
			continue
		}
		peer, err := unix.Getpeername(fd)
		if err != nil {
			continue // not a socket, not connected, or closed meanwhile
		}
		for j, ep := range c.eps {
			if !healthy[j] && c.matches(peer, ep) && isHealthy(fd, ep.Network == "tcp") {
				healthy[j] = true
				c.known[j] = fd
			}
		}
	}
}

func (c *sockChecker) matches(peer unix.Sockaddr, ep conf.Endpoint) bool {
	switch sa := peer.(type) {
	case *unix.SockaddrUnix:
		return ep.Network == "unix" && sa.Name == ep.Address
	case *unix.SockaddrInet4:
		return ep.Network == "tcp" && c.tcpMatches(netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), ep.Address)
	case *unix.SockaddrInet6:
		return ep.Network == "tcp" && c.tcpMatches(netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)), ep.Address)
	}
	return false
}

func (c *sockChecker) tcpMatches(peer netip.AddrPort, address string) bool {
	t := c.tcp[address]
	if t == nil {
		return false
	}
	for _, p := range *t.peers.Load() {
		if p == peer {
			return true
		}
	}
	return false
}

// isHealthy reports whether a connected socket shows no hang-up and no
// pending error, and for TCP is ESTABLISHED. poll with a zero timeout
// reports a pending error as POLLERR without consuming it, which
// getsockopt(SO_ERROR) would do, hiding the error from the vendor module.
func isHealthy(fd int, tcp bool) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	return pollNow(pfd) && !hungUp(pfd[0].Revents) && (!tcp || established(fd))
}

// pollNow polls pfds with a zero timeout, retried on EINTR (the Go runtime
// preempts with SIGURG); it reports whether the revents are valid.
func pollNow(pfds []unix.PollFd) bool {
	if len(pfds) == 0 {
		return true
	}
	_, err := unix.Poll(pfds, 0)
	for err == unix.EINTR {
		_, err = unix.Poll(pfds, 0)
	}
	return err == nil
}

// hungUp reports whether poll's revents show a hang-up, an error or a
// descriptor that is not open.
func hungUp(revents int16) bool {
	return revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
}

// established reports whether a TCP socket is in ESTABLISHED.
func established(fd int) bool {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	return err == nil && info.State == tcpEstablished
}
