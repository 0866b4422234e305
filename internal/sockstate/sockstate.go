// Package sockstate tells whether this process holds a healthy connection to
// a member's network endpoint. It finds the connection by scanning the
// process's own descriptors (/proc/self/fd) for sockets whose peer is the
// endpoint, and judges it with read-only system calls only: it never reads
// from, writes to or closes a descriptor, which belongs to the vendor module.
package sockstate

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/libhaext/libhaext/pkg/conf"
)

// fdDir lists this process's descriptors.
const fdDir = "/proc/self/fd"

// tcpEstablished is TCP_ESTABLISHED, the tcpi_state of a usable connection.
const tcpEstablished = 1

// Checker reports on the endpoints it was prepared for. TCP host names are
// resolved once, by NewChecker. Concurrent checks share one scan of the
// descriptors: a check that arrives while a scan is in flight waits for it
// rather than making its own, as concurrent status calls share a member's
// lightweight call.
type Checker struct {
	eps   []conf.Endpoint             // prepared, without duplicates
	index map[conf.Endpoint]int       // endpoint -> position in eps
	tcp   map[string][]netip.AddrPort // endpoint address -> resolved peers

	mu      sync.Mutex
	current *scan // the scan in flight, if any

	// known[j] is the descriptor that last proved eps[j] healthy, or -1.
	// Only the scan in flight uses it, and scans run one at a time.
	known []int
}

// scan is one pass over the descriptors: the health of every prepared
// endpoint.
type scan struct {
	done    chan struct{}
	healthy []bool
}

// NewChecker prepares a Checker for the endpoints, resolving TCP host names
// with the system resolver within timeout. A name that does not resolve
// matches no socket, so its member is reported with its socket down.
func NewChecker(eps []conf.Endpoint, timeout time.Duration) *Checker {
	c := &Checker{index: make(map[conf.Endpoint]int), tcp: make(map[string][]netip.AddrPort)}
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
		c.tcp[ep.Address] = resolve(ctx, ep.Address)
	}
	return c
}

func resolve(ctx context.Context, address string) []netip.AddrPort {
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return nil
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), uint16(port))}
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil
	}
	out := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(port)))
	}
	return out
}

// Check sets healthy[i] when this process holds at least one healthy
// connection to eps[i]. An endpoint the Checker was not prepared for is
// reported down.
func (c *Checker) Check(eps []conf.Endpoint, healthy []bool) {
	shared := c.shared()
	for i, ep := range eps {
		j, ok := c.index[ep]
		healthy[i] = ok && shared[j]
	}
}

// shared returns the result of the scan in flight, waiting for it, or of a
// new scan when none is.
func (c *Checker) shared() []bool {
	c.mu.Lock()
	if s := c.current; s != nil {
		c.mu.Unlock()
		<-s.done
		return s.healthy
	}
	s := &scan{done: make(chan struct{})}
	c.current = s
	c.mu.Unlock()
	s.healthy = c.scan()
	c.mu.Lock()
	c.current = nil
	c.mu.Unlock()
	close(s.done)
	return s.healthy
}

// scan first asks again the descriptors that last proved each endpoint
// healthy (their peer is checked, so a reused descriptor does not count),
// and looks at every descriptor of the process only when that leaves an
// endpoint unconfirmed.
func (c *Checker) scan() []bool {
	healthy := make([]bool, len(c.eps))
	confirmed := 0
	for j, ep := range c.eps {
		if fd := c.known[j]; fd >= 0 {
			if peer, err := unix.Getpeername(fd); err == nil && c.matches(peer, ep) && isHealthy(fd, ep.Network == "tcp") {
				healthy[j] = true
				confirmed++
				continue
			}
			c.known[j] = -1
		}
	}
	if confirmed < len(c.eps) {
		c.walk(healthy)
	}
	return healthy
}

// walk looks at every descriptor of the process for the endpoints not yet
// healthy.
func (c *Checker) walk(healthy []bool) {
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

func (c *Checker) matches(peer unix.Sockaddr, ep conf.Endpoint) bool {
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

func (c *Checker) tcpMatches(peer netip.AddrPort, address string) bool {
	for _, t := range c.tcp[address] {
		if t == peer {
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
	n, err := unix.Poll(pfd, 0)
	for err == unix.EINTR { // the Go runtime preempts with SIGURG
		n, err = unix.Poll(pfd, 0)
	}
	if err != nil {
		return false
	}
	if n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
		return false
	}
	if tcp {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil || info.State != tcpEstablished {
			return false
		}
	}
	return true
}
