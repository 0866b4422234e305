package probe

// Stage 2: whether this process holds a healthy connection to a member's
// network endpoint. The connection is found by scanning the process's own
// descriptors (/proc/self/fd) for sockets whose peer is the endpoint, and
// judged with read-only system calls only: nothing here reads from, writes
// to or closes a descriptor, which belongs to the vendor module.
//
// The poll is C (hx_poll_down, below), so that a status call's head start
// (lanes.c) makes it before the call enters Go: a scan takes the head
// start's answers for the descriptors it remembers (confirm) and polls only
// what the head start did not.

/*
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include "lanes.h"

int hx_poll_down(const int *fd, int n, unsigned char *down)
{
	struct pollfd pfd[HX_MAX_POLL];
	int i, k, m, r, rc = 0;
	for (i = 0; i < n; i += m) {
		m = n - i < HX_MAX_POLL ? n - i : HX_MAX_POLL;
		for (k = 0; k < m; k++) {
			pfd[k].fd = fd[i + k];
			pfd[k].events = POLLRDHUP;
			pfd[k].revents = 0;
		}
		while ((r = poll(pfd, (nfds_t)m, 0)) < 0 && errno == EINTR) {
		}
		for (k = 0; k < m; k++) {
			down[i + k] = r < 0 || (pfd[k].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
		}
		rc = r < 0 ? -1 : rc;
	}
	return rc;
}
*/
import "C"

import (
	"context"
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

	// known[j] is the descriptor that last proved eps[j] healthy, or -1:
	// stage 2's table, which the head start polls (remember). Only the scan
	// in flight writes it, and scans run one at a time; accessed
	// atomically.
	known []int32
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

// remember makes table (stage 2's table of a pool of lanes, as long as
// c.eps) the checker's record of the descriptors it found healthy, for the
// head start to poll. Call it before the first check.
func (c *sockChecker) remember(table []int32) {
	copy(table, c.known)
	c.known = table
}

// size is how many endpoints the checker has (0 for none).
func (c *sockChecker) size() int {
	if c == nil {
		return 0
	}
	return len(c.eps)
}

// endpointAt returns the index in the checker's table of eps[j] (-1 for
// j < 0, or no checker).
func (c *sockChecker) endpointAt(eps []conf.Endpoint, j int) int {
	if c == nil || j < 0 {
		return -1
	}
	if k, ok := c.index[eps[j]]; ok {
		return k
	}
	return -1
}

func (c *sockChecker) knownFd(j int) int { return int(atomic.LoadInt32(&c.known[j])) }

func (c *sockChecker) setKnown(j, fd int) { atomic.StoreInt32(&c.known[j], int32(fd)) }

// Check sets healthy[i] when this process holds at least one healthy
// connection to eps[i], and fds[i] to the descriptor of one such
// connection (-1 when none). An endpoint the checker was not prepared for
// is reported down.
func (c *sockChecker) Check(eps []conf.Endpoint, healthy []bool, fds []int) {
	s := c.shared(nil)
	for i, ep := range eps {
		j, ok := c.index[ep]
		healthy[i], fds[i] = ok && s.healthy[j], -1
		if healthy[i] {
			fds[i] = s.fds[j]
		}
	}
}

// check is stage 2 of a check: Check with the answers of the status call's
// head start for the descriptors it polled.
func (c *sockChecker) check(eps []conf.Endpoint, healthy []bool, head HeadStart) {
	s := c.shared(head.h)
	for i, ep := range eps {
		j, ok := c.index[ep]
		healthy[i] = ok && s.healthy[j]
	}
}

// shared returns the scan in flight, once it has ended, or a new scan when
// none is.
func (c *sockChecker) shared(ahead *C.struct_hx_head) *scan {
	c.mu.Lock()
	if s := c.current; s != nil {
		c.mu.Unlock()
		<-s.done
		return s
	}
	s := &scan{done: make(chan struct{})}
	c.current = s
	c.mu.Unlock()
	s.healthy = c.scan(ahead)
	s.fds = make([]int, len(c.known))
	for j := range s.fds {
		s.fds[j] = c.knownFd(j)
	}
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
func (c *sockChecker) scan(ahead *C.struct_hx_head) []bool {
	healthy := make([]bool, len(c.eps))
	if c.confirm(healthy, ahead) < len(c.eps) {
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
// then one poll for all of them, unless the head start (ahead) polled the
// descriptor already. It returns how many it confirmed.
func (c *sockChecker) confirm(healthy []bool, ahead *C.struct_hx_head) int {
	down := make([]bool, len(c.eps))
	var fds []C.int
	var at []int
	for j, ep := range c.eps {
		fd := c.knownFd(j)
		if fd < 0 {
			continue
		}
		if peer, err := unix.Getpeername(fd); err != nil || !c.matches(peer, ep) {
			c.setKnown(j, -1)
			continue
		}
		if ahead != nil && j < int(ahead.polled) && int(ahead.fd[j]) == fd {
			down[j] = ahead.down[j] != 0
			continue
		}
		fds, at = append(fds, C.int(fd)), append(at, j)
	}
	for k, d := range pollDown(fds) {
		down[at[k]] = d
	}
	confirmed := 0
	for j, ep := range c.eps {
		fd := c.knownFd(j)
		if fd < 0 {
			continue
		}
		if down[j] || (ep.Network == "tcp" && !established(fd)) {
			c.setKnown(j, -1)
			continue
		}
		healthy[j] = true
		confirmed++
	}
	return confirmed
}

// walk looks at every descriptor of the process for the endpoints not yet
// healthy: those whose peer is one of them are polled at once, and the
// first healthy one (in the directory's order) proves its endpoint.
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
	var fds []C.int
	var at []int // the endpoint fds[k] leads to
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
			if !healthy[j] && c.matches(peer, ep) {
				fds, at = append(fds, C.int(fd)), append(at, j)
			}
		}
	}
	for k, down := range pollDown(fds) {
		j, fd := at[k], int(fds[k])
		if !healthy[j] && !down && (c.eps[j].Network != "tcp" || established(fd)) {
			healthy[j] = true
			c.setKnown(j, fd)
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

// pollDown polls fds at once (hx_poll_down, a zero timeout, retried on
// EINTR, which the Go runtime's preemption signal causes) and reports, per
// descriptor, whether it shows a hang-up, an error, or is not open; every
// one when poll failed. poll reports a pending error as POLLERR without
// consuming it, which getsockopt(SO_ERROR) would do, hiding the error from
// the vendor module.
func pollDown(fds []C.int) []bool {
	if len(fds) == 0 {
		return nil
	}
	cdown := make([]C.uchar, len(fds))
	C.hx_poll_down(&fds[0], C.int(len(fds)), &cdown[0])
	down := make([]bool, len(fds))
	for k, d := range cdown {
		down[k] = d != 0
	}
	return down
}

// established reports whether a TCP socket is in ESTABLISHED.
func established(fd int) bool {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	return err == nil && info.State == tcpEstablished
}
