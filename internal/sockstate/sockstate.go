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
	"time"

	"golang.org/x/sys/unix"

	"github.com/libhaext/libhaext/pkg/conf"
)

// tcpEstablished is TCP_ESTABLISHED, the tcpi_state of a usable connection.
const tcpEstablished = 1

// Checker matches sockets against endpoints. TCP host names are resolved
// once, by NewChecker; IP literals need no resolution.
type Checker struct {
	fdDir string
	tcp   map[string][]netip.AddrPort // endpoint address -> resolved peers
}

// NewChecker prepares a Checker for the endpoints, resolving TCP host names
// with the system resolver within timeout. A name that does not resolve
// matches no socket, so its member is reported with its socket down.
func NewChecker(eps []conf.Endpoint, timeout time.Duration) *Checker {
	c := &Checker{fdDir: "/proc/self/fd", tcp: make(map[string][]netip.AddrPort)}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, ep := range eps {
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
// connection to eps[i]. Endpoints not prepared by NewChecker are resolved
// only if they are IP literals.
func (c *Checker) Check(eps []conf.Endpoint, healthy []bool) {
	for i := range healthy {
		healthy[i] = false
	}
	dir, err := os.Open(c.fdDir)
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
		for i, ep := range eps {
			if !healthy[i] && c.matches(peer, ep) {
				healthy[i] = isHealthy(fd, ep.Network == "tcp")
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
	targets, ok := c.tcp[address]
	if !ok {
		targets = resolve(context.Background(), literalOnly(address))
	}
	for _, t := range targets {
		if t == peer {
			return true
		}
	}
	return false
}

// literalOnly returns address when its host is an IP literal, else "", so
// that an unprepared host name is never looked up inside a status call.
func literalOnly(address string) string {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return ""
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return ""
	}
	return address
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
