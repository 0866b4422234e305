package probe

// Stage 2's TCP endpoints: the addresses a host name resolves to, looked up
// when the engine starts and again in the background, never inside a
// check.

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// lookupNetIP resolves host names (the system resolver; tests replace it).
var lookupNetIP = net.DefaultResolver.LookupNetIP

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
