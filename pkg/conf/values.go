package conf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Endpoint is the network endpoint at which a member HSM's status can be
// queried, as configured in the HAMemberEndpoints section.
type Endpoint struct {
	// Network is "unix" or "tcp".
	Network string
	// Address is, for "unix", the socket path; for "tcp", a "host:port"
	// string suitable for net.Dial and for comparison (IPv6 addresses are
	// written "[addr]:port", host names are lower-cased, the port has no
	// leading zeros).
	Address string
}

// String returns the endpoint in the form ParseEndpoint accepts:
// "unix:/path" or "tcp:host:port".
func (e Endpoint) String() string {
	return e.Network + ":" + e.Address
}

// MaxUnixPath is the longest unix socket path, in bytes, an endpoint may
// name: sun_path holds 108 bytes on Linux, the terminating NUL included.
const MaxUnixPath = 107

// ParseEndpoint parses a member endpoint: "unix:/abs/path", "tcp:host:port"
// or "tcp:[v6addr]:port". Surrounding white space is ignored and the scheme
// is case-insensitive. The port must be a decimal number in 1..65535 and a
// unix socket path must be 1..MaxUnixPath bytes long (no socket can have a
// longer one). Anything else is an error.
func ParseEndpoint(s string) (Endpoint, error) {
	s = strings.TrimSpace(s)
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Endpoint{}, fmt.Errorf("endpoint %q: want unix:/path or tcp:host:port", s)
	}
	switch strings.ToLower(scheme) {
	case "unix":
		if rest == "" {
			return Endpoint{}, fmt.Errorf("endpoint %q: empty unix socket path", s)
		}
		if strings.IndexByte(rest, 0) >= 0 {
			return Endpoint{}, fmt.Errorf("endpoint %q: unix socket path contains a NUL byte", s)
		}
		if len(rest) > MaxUnixPath {
			return Endpoint{}, fmt.Errorf("endpoint %q: unix socket path is %d bytes, longer than the %d a unix socket address holds",
				s, len(rest), MaxUnixPath)
		}
		return Endpoint{Network: "unix", Address: rest}, nil
	case "tcp":
		addr, err := parseHostPort(rest)
		if err != nil {
			return Endpoint{}, fmt.Errorf("endpoint %q: %w", s, err)
		}
		return Endpoint{Network: "tcp", Address: addr}, nil
	default:
		return Endpoint{}, fmt.Errorf("endpoint %q: unsupported network %q (want unix or tcp)", s, scheme)
	}
}

// parseHostPort validates "host:port" or "[v6]:port" and returns it in
// canonical form.
func parseHostPort(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", err
	}
	if port == "" {
		return "", errors.New("missing port")
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return "", fmt.Errorf("port %q is not a decimal number", port)
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", fmt.Errorf("port %q is out of range 1..65535", port)
	}
	if host == "" {
		return "", errors.New("missing host")
	}
	bracketed := strings.HasPrefix(s, "[")
	if ip, err := netip.ParseAddr(host); err == nil {
		if bracketed && !ip.Is6() {
			return "", fmt.Errorf("host %q: brackets are only for IPv6 addresses", host)
		}
		host = ip.String()
	} else {
		if bracketed || strings.Contains(host, ":") {
			return "", fmt.Errorf("host %q is not a valid IPv6 address", host)
		}
		if !validHostName(host) {
			return "", fmt.Errorf("host %q is not a valid host name or IP address", host)
		}
		host = strings.ToLower(host)
	}
	return net.JoinHostPort(host, strconv.FormatUint(n, 10)), nil
}

// validHostName reports whether s looks like a DNS host name: ASCII letters,
// digits, '-', '_' and '.', not longer than 253 bytes.
func validHostName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// ParseSerial parses an HSM or token serial number. Surrounding white space
// is ignored. A string of decimal digits only is decimal (Luna serials);
// anything else made of hexadecimal digits (either case) is hexadecimal
// (SoftHSM2 serials). A "0x" prefix is not accepted. An empty string, any
// other character, or a value that does not fit in 64 bits is an error.
func ParseSerial(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty serial")
	}
	decimal := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			decimal = false
		default:
			return 0, errors.New("not a decimal or hexadecimal serial")
		}
	}
	base, kind := 16, "hexadecimal"
	if decimal {
		base, kind = 10, "decimal"
	}
	v, err := strconv.ParseUint(s, base, 64)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) {
			err = ne.Err
		}
		return 0, fmt.Errorf("%s serial does not fit in 64 bits: %w", kind, err)
	}
	return v, nil
}

// ParseStatusTimeout parses a status timeout given as a whole number of
// seconds (the HAConfiguration statusTimeout key, or a command-line flag).
// Surrounding white space is ignored. A value above 60 is clamped to
// MaxStatusTimeout; a value that is not an integer, or is below 1, yields
// DefaultStatusTimeout. In both cases warning describes what was done (it
// does not name a file or key: the caller adds that); otherwise warning is
// empty.
func ParseStatusTimeout(s string) (d time.Duration, warning string) {
	t := strings.TrimSpace(s)
	maxSec := int64(MaxStatusTimeout / time.Second)
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			if strings.HasPrefix(t, "-") {
				return DefaultStatusTimeout, fmt.Sprintf("timeout %q is below 1 second; using %v", s, DefaultStatusTimeout)
			}
			return MaxStatusTimeout, fmt.Sprintf("timeout %q is above %v; using %v", s, MaxStatusTimeout, MaxStatusTimeout)
		}
		return DefaultStatusTimeout, fmt.Sprintf("timeout %q is not a whole number of seconds; using %v", s, DefaultStatusTimeout)
	}
	switch {
	case n < 1:
		return DefaultStatusTimeout, fmt.Sprintf("timeout %q is below 1 second; using %v", s, DefaultStatusTimeout)
	case n > maxSec:
		return MaxStatusTimeout, fmt.Sprintf("timeout %q is above %v; using %v", s, MaxStatusTimeout, MaxStatusTimeout)
	}
	return time.Duration(n) * time.Second, ""
}
